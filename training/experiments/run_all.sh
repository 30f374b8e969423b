#!/usr/bin/env bash
# The result runs behind docs/results.md's tables (about 35 minutes on 2 free cores): 4 tasks x
# {e2vpt, vpt-deep, linear, full} at 8 epochs, then the gtsrb ablation; finished runs are skipped.
# FULL_EPOCHS=4 is what the first sweep used to fit its budget (the table's "full, 4 epochs" row).
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKBONE=${BACKBONE:-assets/backbones/vit_tiny_p4_32_cifar10.safetensors}
OUT=${OUT:-runs/vtab}
.venv/bin/python -m training.experiments.vtab --backbone "$BACKBONE" --out "$OUT" \
    --epochs "${EPOCHS:-8}" --full-epochs "${FULL_EPOCHS:-8}" --workers 2 --ablation-task gtsrb
.venv/bin/python -m training.experiments.summarize "$OUT" > "$OUT/tables.md"
mkdir -p assets/tasks
for task in gtsrb dtd10 sign-digits fashion-mnist; do
    cp "$OUT/$task/e2vpt.safetensors" "assets/tasks/$task.safetensors"
done
