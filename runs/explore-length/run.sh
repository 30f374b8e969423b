#!/bin/bash
# usage: run.sh TASK N LR WD: e2vpt's prompts without pruning (the ablation's visual + key-value row) with N
# visual and N key-value tokens per layer, at the lr / weight decay the sweep's e2vpt run chose for TASK;
# the sweep's schedule and split, 2 seeds, judged on validation
cd "$(git rev-parse --show-toplevel)"
task=$1; n=$2; lr=$3; wd=$4
case $task in
  gtsrb) data=gtsrb.tar; extra=(--val-group '^([^/]+/\d+)_');;
  sign-digits) data=sign_digits.tar; extra=();;
esac
nice -n 19 .venv/bin/python -m training.cli train --data ../shared/datasets/$data \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out runs/explore-length/$task-n$n.safetensors --epochs 12 --batch-size 32 --optimizer adamw --threads 1 \
  --no-progress --seed 0 --task-name $task --seeds 2 "${extra[@]}" --no-hp-search --lr $lr --weight-decay $wd \
  --method e2vpt --visual-tokens $n --kv-tokens $n --token-prune 0 --segment-prune 0 \
  > runs/explore-length/$task-n$n.log 2>&1
