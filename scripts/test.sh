#!/usr/bin/env bash
# Set up, then lint, type-check and run the test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
# The docs site, strictly (mkdocs.yml: any warning or broken link fails), into a temporary folder
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
# (not --quiet: it hides the warnings from --strict too, and the build then passes)
export NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true  # plugins' banners about MkDocs 2
.venv/bin/mkdocs build --strict --site-dir "$SITE"
