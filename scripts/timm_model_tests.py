"""Run timm's own model tests on every shufflenet model.

Fetches the source distribution of the installed timm version from the package index, as pip
does (``pip download timm==VERSION --no-binary :all: --no-deps``), takes its ``tests/`` and its
pytest configuration, adds a ``conftest.py`` that imports ``shufflenet`` and ``timm`` before
collection (so our models are timm models when ``tests/test_models.py`` lists them), and runs
``tests/test_models.py -k shufflenet``. Two edits to timm's files, both checked:

- our module joins ``FEAT_INTER_FILTERS``, the list of timm's model modules that opted in to
  ``forward_intermediates``/``prune_intermediate_layers``, so the tests of that API run too;
- the tests in ``DESELECTED`` are deselected, each with its reason (printed).

Prints the count per test (passed, failed, skipped) as a Markdown table and exits non-zero if a
test failed or was skipped, or if no test ran.

Usage: ``.venv/bin/python scripts/timm_model_tests.py [--sdist FILE] [--workdir DIR] [PYTEST_ARGS]``
(``--sdist``: an already downloaded ``timm-VERSION.tar.gz`` instead of the index).
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

# The module timm files our models under (``shufflenet.models.timm_interop``).
OUR_MODULE = "timm_interop"
# Test ids (of tests/test_models.py) that cannot run here -> why.
_NEEDS_FILES = (
    "downloads the publishers' files (download.pytorch.org, download.openmmlab.com), which this "
    "offline machine and CI cannot reach; tests/test_pretrained.py runs the same calls (in_chans "
    "1 and 2, num_classes 0 and 5, features_only) against files served on 127.0.0.1"
)
DESELECTED: dict[str, str] = {
    "test_model_load_pretrained": _NEEDS_FILES,
    "test_model_features_pretrained": _NEEDS_FILES,
}
CONFTEST = '''"""Added by shufflenet's scripts/timm_model_tests.py: register shufflenet's models
with timm before timm's tests list the models."""

import shufflenet  # noqa: F401  (registers every model with timm when timm is imported)
import timm
import torch

assert timm.list_models("shufflenet*"), "shufflenet's models are not registered with timm"
# One intra-op thread: these small inputs gain nothing from more, and threads that wait on each
# other stall badly while another process holds a core.
torch.set_num_threads(1)
'''
FEAT_INTER_ANCHOR = "FEAT_INTER_FILTERS = ["


def _download(version: str, dest: Path) -> Path:
    """The sdist of timm ``version``, fetched into ``dest`` by pip."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", f"timm=={version}"),
            *("--no-binary", ":all:", "--no-deps", "--quiet", "--disable-pip-version-check"),
            *("-d", str(dest)),
        ],
        check=True,
    )
    found = sorted(dest.glob(f"timm-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"error: pip download left no timm-{version}.tar.gz in {dest}")
    return found[0]


def _extract(sdist: Path, dest: Path) -> None:
    """The regular files of the sdist's ``tests/`` and its ``pyproject.toml``, into ``dest``
    (no links, no paths outside it; timm's package source stays out, so the installed timm is
    the one tested)."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or not member.isfile() or ".." in parts:
                continue
            inner = parts[1:]
            if inner[0] != "tests" and inner != ("pyproject.toml",):
                continue
            target = dest.joinpath(*inner)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    if not (dest / "tests" / "test_models.py").is_file():
        raise SystemExit(f"error: {sdist} has no tests/test_models.py")


def _opt_in_intermediates(test_file: Path) -> None:
    text = test_file.read_text(encoding="utf-8")
    if text.count(FEAT_INTER_ANCHOR) != 1:
        raise SystemExit(f"error: {test_file} has no single {FEAT_INTER_ANCHOR!r} to opt in to")
    text = text.replace(FEAT_INTER_ANCHOR, f"{FEAT_INTER_ANCHOR}{OUR_MODULE!r}, ")
    test_file.write_text(text, encoding="utf-8")


def _counts(report: Path) -> tuple[dict[str, collections.Counter[str]], set[str]]:
    """Test function -> outcome counts, and the models tested, from pytest's JUnit XML report
    (test ids end in ``-MODEL]``)."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    models = set()
    for case in ET.parse(report).getroot().iter("testcase"):
        test, _, params = case.get("name", "").partition("[")
        models.add(params.rstrip("]").rsplit("-", 1)[-1])
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        counts[test][{"failure": "failed", "error": "failed"}.get(outcome, outcome)] += 1
    return dict(sorted(counts.items())), models


def _table(counts: dict[str, collections.Counter[str]]) -> str:
    rows = ["| test | passed | failed | skipped |", "| --- | --- | --- | --- |"]
    rows += [
        f"| `{test}` | {c['passed']} | {c['failed']} | {c['skipped']} |"
        for test, c in counts.items()
    ]
    total = sum(counts.values(), collections.Counter())
    rows.append(f"| all | {total['passed']} | {total['failed']} | {total['skipped']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sdist", type=Path, help="a downloaded timm-VERSION.tar.gz")
    parser.add_argument("--workdir", type=Path, help="work here (kept) instead of a temp dir")
    parser.add_argument("-k", dest="keyword", help="pytest's -k, within -k shufflenet")
    args, pytest_args = parser.parse_known_args(argv)
    keyword = "shufflenet" if args.keyword is None else f"shufflenet and ({args.keyword})"
    version = importlib.metadata.version("timm")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="timm-tests-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sdist = args.sdist or _download(version, work)
        _extract(sdist, work)
        _opt_in_intermediates(work / "tests" / "test_models.py")
        (work / "conftest.py").write_text(CONFTEST, encoding="utf-8")
        print(f"timm {version}: {sdist.name}; deselected (with reasons):")
        for test_id, reason in DESELECTED.items():
            print(f"  {test_id}: {reason}")
        if not DESELECTED:
            print("  none")
        report = work / "report.xml"
        command = [
            *(sys.executable, "-m", "pytest", "tests/test_models.py", "-k", keyword),
            *("-c", str(work / "pyproject.toml"), "--rootdir", str(work)),
            *("-p", "no:cacheprovider", "-p", "no:anyio", "-q", "-ra"),
            *("-W", "ignore::pytest.PytestUnknownMarkWarning"),  # timm's timeout marks
            f"--junitxml={report}",
            *(f"--deselect=tests/test_models.py::{test_id}" for test_id in DESELECTED),
            *pytest_args,
        ]
        start = time.perf_counter()
        code = subprocess.run(command, cwd=work, check=False).returncode
        elapsed = time.perf_counter() - start
        if not report.is_file():
            return code or 1
        counts, models = _counts(report)
        print(
            f"\ntimm {version} tests/test_models.py -k {keyword!r}: {len(models)} models, "
            f"{elapsed:.0f} s\n"
        )
        print(_table(counts))
        total = sum(counts.values(), collections.Counter())
        if total["failed"] or total["skipped"] or not total["passed"]:
            return code or 1
        return code
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
