"""Sphinx configuration: the API reference from the docstrings, and the Markdown pages of docs/.

Build: ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``); every
warning is an error, in CI too. Docstrings are Google style (napoleon) with reST roles.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "lightning-critical"
author = "lightning-critical contributors"
copyright = "lightning-critical contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Google-style docstrings: Args / Returns / Raises / Example sections.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Lightning's hooks (on_train_start, ...) that callbacks override are not part of their API.
autodoc_inherit_docstrings = False

# Markdown: heading anchors so that links such as design.md#layout resolve.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "lightning-critical"
