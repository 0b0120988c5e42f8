#!/usr/bin/env bash
# Set up, then lint, type-check and run the test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# two pytest-xdist workers, one per core, each test file on one worker (its module fixtures built
# once), the 20 slowest listed at the end; arguments after the script name go to pytest (-n 0:
# one process)
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=20 "$@"
# The docs site, strictly (mkdocs.yml: any warning or broken link fails), into a temporary folder
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
# (not --quiet: it hides the warnings from --strict too, and the build then passes)
export NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true  # plugins' banners about MkDocs 2
.venv/bin/mkdocs build --strict --site-dir "$SITE"
