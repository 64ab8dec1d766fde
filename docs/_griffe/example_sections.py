"""Griffe extension for the API reference: read ``Example:`` as a Google examples section.

The package's docstrings head their doctests ``Example:`` (singular), which Python's
Google-style readers (napoleon) accept. Griffe's Google parser only knows ``Examples:`` and
reads the singular as an admonition of Markdown text, where ``>>>`` lines become block
quotes and ``x["w"][0]`` a reference link. Renaming the heading in the parsed copy keeps the
source as it is and renders every example as a Python console block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrites ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", docstring.value)
