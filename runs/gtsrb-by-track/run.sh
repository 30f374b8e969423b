#!/bin/bash
# gtsrb's linear, e2vpt and full runs on each retired backbone, validation held out by track as the demo
# backbone's sweep does (sweep.VAL_GROUP): the sweep's own runner and protocol, one backbone after another.
# usage: run.sh SWEEP...   (SWEEP: a name in sweep.BACKBONE_SWEEPS' roots, e.g. vtab-distill)
cd "$(git rev-parse --show-toplevel)"
for sweep in "$@"; do
  # the backbone the sweep trained on, now in assets/backbones/retired/
  backbone=$(head -1 runs/$sweep/gtsrb/e2vpt.log | grep -o -- '--backbone [^ ]*' | cut -d' ' -f2 \
    | sed 's#backbones/#backbones/retired/#')
  nice -n 19 .venv/bin/python -m training.experiments.vtab --backbone "$backbone" --out runs/gtsrb-by-track/$sweep \
    --epochs 12 --hp-epochs 4 --seeds 3 --workers 1 --tasks gtsrb --methods linear e2vpt full --ablation-tasks \
    --curve-task '' >> runs/gtsrb-by-track/$sweep.out 2>&1
done
