#!/usr/bin/env bash
# Set up, then the main job: train ShuffleNet V2 0.5x on the embedded digits (scikit-learn's
# 1,797 real 8x8 handwritten digits, nothing downloaded), evaluate the saved model and say
# where the curves are. Each run gets a fresh directory under runs/. --fast trains the same
# network in its shuffle-free form, the faster one here (README: "Faster training").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ""  # the library alone: no test tools, no optional runtimes
out="runs/main-$(date +%Y%m%d-%H%M%S)"
.venv/bin/shufflenet train shufflenet_v2_x0_5 --data digits --fast --out "$out"
echo
.venv/bin/shufflenet eval --weights "$out/model.safetensors"
echo
echo "training curves (loss and accuracy per epoch): $out/curves.png"
