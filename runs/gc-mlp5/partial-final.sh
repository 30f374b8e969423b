#!/bin/bash
# The sweep's protocol (12 epochs, 3 seeds, the same split) rerun at the pick a partial row's grid check moved to.
# usage: partial-final.sh TASK ROW TRAINABLE LR WD
cd "$(git rev-parse --show-toplevel)"
task=$1; row=$2; trainable=$3; lr=$4; wd=$5
case $task in gtsrb) data=gtsrb.tar; vg=(--val-group '^([^/]+/\d+)_');; sign-digits) data=sign_digits.tar; vg=();; esac
nice -n 19 .venv/bin/python -m training.cli train --data ../shared/datasets/$data \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out runs/gc-mlp5/final/$task-partial-$row.safetensors --epochs 12 --batch-size 32 --optimizer adamw \
  --threads 1 --no-progress --seed 0 --task-name $task --seeds 3 "${vg[@]}" --no-hp-search --lr $lr \
  --weight-decay $wd --method full --trainable "$trainable" > runs/gc-mlp5/final/$task-partial-$row.log 2>&1
