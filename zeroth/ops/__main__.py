"""``python -m zeroth.ops``: build the compiled kernels now (or find them in the cache).

Prints the backend and the cache folder. A failed build is an error here (``ZEROTH_OPS=cpp``
unless set otherwise), so this is the ahead-of-time build step for an image or a shared
cache (``ZEROTH_BUILD_DIR``).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ.setdefault("ZEROTH_OPS", "cpp")
    from . import backend
    from ._build import cache_root

    print(f"zeroth.ops backend: {backend()} (cache: {cache_root()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
