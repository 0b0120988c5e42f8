"""MkDocs hooks: a page's ``<!-- results: FILE -->`` markers become the generated section of
that results file (``scripts/docs_gen.py``), so no page carries a hand-copied measured table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "docs_gen", Path(__file__).resolve().parent / "docs_gen.py"
)
assert _spec and _spec.loader
docs_gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_gen)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return docs_gen.expand_results(markdown)
