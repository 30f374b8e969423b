#!/usr/bin/env bash
# The result runs behind docs/results.md: 4 tasks x {e2vpt, vpt-deep, vpt-shallow, linear, full}, each with its
# lr x wd grid on validation and 3 seeds of the chosen configuration, then the Table-4 ablation (gtsrb, dtd10)
# and the pruning curve (dtd10). Finished runs are skipped: rerun the same command to continue a stopped sweep.
# Run it alone on the machine (2 single-thread runs at once), and never edit this file while it runs (bash reads
# it as it goes); `--dry-run` as an extra argument lists what is left,
# `--grid-check DIR` (with --dry-run or not) checks the grids that chose an end of their lr grid instead (see vtab.py).
# `--partial-tasks gtsrb sign-digits` adds full fine-tuning of parts of the backbone (sweep.PARTIAL_ROWS) on those tasks
# (beside --grid-check: checks those rows' grids too).
set -euo pipefail
cd "$(dirname "$0")/../.."
# defaults: the demo backbone's sweep (docs/results.md); retired ones: OUT=runs/vtab-distill-mlp, OUT=runs/vtab-distill-s3,
# OUT=runs/vtab-distill, OUT=runs/vtab
BACKBONE=${BACKBONE:-assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors}
OUT=${OUT:-runs/vtab-distill-mlp5}
PLOTS=${PLOTS:-docs/img/results-distill-mlp5}  # where the figures of $OUT go
.venv/bin/python -m training.experiments.vtab --backbone "$BACKBONE" --out "$OUT" \
    --epochs "${EPOCHS:-12}" --hp-epochs "${HP_EPOCHS:-4}" --seeds "${SEEDS:-3}" --workers "${WORKERS:-2}" "$@"
case " $* " in *" --dry-run "* | *" --grid-check "*) exit 0 ;; esac
.venv/bin/python -m training.experiments.summarize "$OUT" > "$OUT/tables.md"
.venv/bin/python -m training.experiments.plots "$OUT" "$PLOTS"
.venv/bin/python -m training.experiments.results_doc  # the figures docs/results*.md and the README quote
