"""Sphinx configuration of zeroth's documentation site (``make docs``; ``make docs-doctest``).

Sphinx with autodoc + napoleon (the API reference from the docstrings, Google or NumPy style),
MyST (pages in Markdown; README sections are included, not copied, so the tables stay the
measured ones) and the Furo theme. No extension reaches the network (no intersphinx).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the checkout's zeroth and examples (an install works too)

project = "zeroth"
author = "zeroth contributors"
copyright = "2026, zeroth contributors"

from zeroth import __version__ as release  # noqa: E402

version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # an override without a docstring must not show torch's (and run its examples)
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

# doctest: every example in the pages (and in docstrings) runs in `make docs-doctest` (CI)
doctest_global_setup = """
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
"""

html_theme = "furo"
html_title = f"zeroth {release}"
