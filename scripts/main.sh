#!/usr/bin/env bash
# Set up, then the main job: list the model zoo and profile ShuffleNet V2 1x.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/shufflenet models
.venv/bin/shufflenet profile shufflenet_v2_x1_0 | tail -n 14
