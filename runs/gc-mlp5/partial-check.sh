#!/bin/bash
# A grid check of the partial fine-tuning rows whose lr grid chose its top (vtab.py --grid-check covered only the
# five methods then; with --partial-tasks it now checks these rows itself): the same check by hand, as vtab.py
# does it: a grid whose lowest rate is the old pick (lr centre 4x
# the pick), the run's weight decays and warm-up, 4-epoch points, one seed, a final as short as a point (the
# pick is the answer).
# usage: partial-check.sh TASK ROW TRAINABLE CENTRE   (ROW: first2, last2, stem; as sweep.PARTIAL_ROWS)
cd "$(git rev-parse --show-toplevel)"
task=$1; row=$2; trainable=$3; centre=$4
case $task in gtsrb) data=gtsrb.tar; vg=(--val-group '^([^/]+/\d+)_');; sign-digits) data=sign_digits.tar; vg=();; esac
nice -n 19 .venv/bin/python -m training.cli train --data ../shared/datasets/$data \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out runs/gc-mlp5/$task-partial-$row.safetensors --epochs 4 --batch-size 32 --optimizer adamw --threads 1 \
  --no-progress --seed 0 --task-name $task --seeds 1 "${vg[@]}" --warmup-epochs 0.6666666666666666 \
  --hp-search --hp-epochs 4 --lr $centre \
  --method full --trainable "$trainable" > runs/gc-mlp5/$task-partial-$row.log 2>&1
