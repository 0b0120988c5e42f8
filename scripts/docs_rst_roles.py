"""A griffe extension for the API reference: our docstrings' reStructuredText roles as code.

The docstrings cross-reference with Sphinx roles (``:func:`shufflenet.load```); mkdocstrings
renders Markdown, where those would show as literal text. This turns each role into a code span
(``~a.b.c`` into its last part, as Sphinx shows it). ``mkdocs.yml`` loads it by path.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const|ref):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def replace_roles(text: str) -> str:
    """``text`` with every Sphinx role written as a Markdown code span."""
    return ROLE.sub(_code, text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = replace_roles(obj.docstring.value)
