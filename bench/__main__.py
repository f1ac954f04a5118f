"""``python -m bench`` (``make bench``): the engine tables, then the constrained-solver table
(``--no-constrained`` skips it)."""
import sys

from . import engine

args = [a for a in sys.argv[1:] if a != "--no-constrained"]
engine.main(args)
if "--no-constrained" not in sys.argv:
    from .constrained.__main__ import main as constrained_main

    constrained_main([])
