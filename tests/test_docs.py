"""The docs' generated pages (scripts/docs_gen.py): the CLI reference covers every command and
option, the results page every results file with its machine and command. scripts/test.sh
builds the whole site strictly."""

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from shufflenet.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docs_gen():
    return _script("docs_gen")


def _parsers(parser: argparse.ArgumentParser, name: str = ""):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}".strip())


def test_cli_reference_has_every_command_and_option(docs_gen):
    page = docs_gen.cli_markdown()
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10
    for name, parser in parsers[1:]:
        assert f"# `{name}`" in page, name
        section = page.split(f"# `{name}`", 1)[1].split("# `", 1)[0]  # up to the next heading
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert f"`{option}`" in section, (name, option)
            if action.help and not isinstance(action, argparse._SubParsersAction):
                helptext = parser._get_formatter()._expand_help(action)
                assert docs_gen._cell(helptext) in section, (name, action.dest)


def test_cli_reference_shows_defaults_and_usage(docs_gen):
    page = docs_gen.cli_markdown()
    assert "usage: shufflenet export" in page
    assert re.search(r"\| `--runs` `RUNS` \| [^|]+ \| `20` \|", page)


def test_results_page_has_each_file_with_machine_and_command(docs_gen):
    page = docs_gen.results_markdown()
    sections = page.split("\n## ")[1:]
    assert len(sections) == len(docs_gen.SECTIONS) >= 5
    for section, (filename, title, script, _) in zip(sections, docs_gen.SECTIONS, strict=True):
        assert section.startswith(title)
        assert f"benchmarks/results/{filename}" in section
        assert "**Machine:** " in section and "SIMD " in section and "versions: " in section
        assert f"python benchmarks/{script}" in section
        assert section.count("\n|") >= 3  # a header, its rule and at least one row


def test_rst_roles_become_code_spans():
    roles = _script("docs_rst_roles")
    text = "See :func:`shufflenet.load`, :class:`~shufflenet.export.ExportOptions` and ``x``."
    assert roles.replace_roles(text) == "See `shufflenet.load`, `ExportOptions` and ``x``."


def test_results_page_renders_every_results_file(docs_gen):
    results = ROOT / "benchmarks" / "results"
    files = {str(p.relative_to(results)) for p in results.rglob("*.json")}
    assert files == {filename for filename, *_ in docs_gen.SECTIONS}


def _pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_pages_take_measured_tables_from_results_files(docs_gen):
    """Measured tables reach the pages only through results markers, which the build expands
    (scripts/docs_hooks.py); a hand-copied median-with-spread table row fails."""
    known = {filename for filename, *_ in docs_gen.SECTIONS}
    used = set()
    for page in _pages():
        text = page.read_text()
        markers = docs_gen.RESULTS_MARKER.findall(text)
        used |= {name for name, _ in markers}
        assert {name for name, _ in markers} <= known, page
        expanded = docs_gen.expand_results(text)
        assert not docs_gen.RESULTS_MARKER.search(expanded)
        assert expanded.count("\n|") >= text.count("\n|") + 3 * len(markers), page
        copied = [
            line
            for line in text.splitlines()
            if line.startswith("|") and re.search(r"\d\.\d+x? [(\[][\d.]+\.\.\d", line)
        ]
        assert not copied, (page, copied[:2])
    assert len(used) >= 4


def test_results_marker_of_an_unknown_file_fails(docs_gen):
    with pytest.raises(ValueError, match="no results section"):
        docs_gen.expand_results("<!-- results: nothing.json -->")
