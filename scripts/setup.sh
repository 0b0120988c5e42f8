#!/usr/bin/env bash
# Create .venv (once) and install shufflenet into it with the extras named by $1: "dev" (the
# default: the test tools and every optional runtime) or "" (the library alone, what training
# and evaluation need).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1-dev}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}" 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import shufflenet, torch; print(f"shufflenet {shufflenet.__version__}, torch {torch.__version__}")'
