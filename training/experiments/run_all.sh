#!/usr/bin/env bash
# The result runs behind docs/results.md, as run on a 2-core CPU (about 50 minutes):
# 4 tasks x {e2vpt, vpt-deep, linear} at 8 epochs, `full` at 4 epochs (a full fine-tuning epoch costs
# about 3x a prompt epoch here), then the gtsrb ablation. Resumable: finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKBONE=${BACKBONE:-assets/backbones/vit_tiny_p4_32_cifar10.safetensors}
OUT=${OUT:-runs/vtab}
.venv/bin/python -m training.experiments.vtab --backbone "$BACKBONE" --out "$OUT" \
    --epochs "${EPOCHS:-8}" --full-epochs "${FULL_EPOCHS:-4}" --workers 2 --ablation-task gtsrb
.venv/bin/python -m training.experiments.summarize "$OUT" > "$OUT/tables.md"
mkdir -p assets/tasks
for task in gtsrb dtd10 sign-digits fashion-mnist; do
    cp "$OUT/$task/e2vpt.safetensors" "assets/tasks/$task.safetensors"
done
