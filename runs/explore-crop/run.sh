#!/bin/bash
# usage: [EPOCHS=24] runs/explore-crop/run.sh TASK METHOD LR WD [extra...]: the sweep's schedule (12 epochs unless
# EPOCHS says otherwise) and split at the lr / wd its grid chose for TASK and METHOD, 2 seeds, with
# --augment --no-flip (random crop, no flip); writes runs/explore-crop/TASK-METHOD[-eEPOCHS].*
cd "$(git rev-parse --show-toplevel)"
task=$1; method=$2; lr=$3; wd=$4; shift 4
epochs=${EPOCHS:-12}
name=$task-$method; [ "$epochs" != 12 ] && name=$name-e$epochs
data=../shared/datasets/${task//-/_}.tar
group=(); [ "$task" = gtsrb ] && group=(--val-group '^([^/]+/\d+)_')
nice -n 19 .venv/bin/python -m training.cli train --data "$data" \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out "runs/explore-crop/$name.safetensors" --epochs "$epochs" --batch-size 32 --optimizer adamw --threads 1 \
  --no-progress --seed 0 --task-name "$task" --seeds 2 "${group[@]}" --no-hp-search --lr "$lr" --weight-decay "$wd" \
  --method "$method" --augment --no-flip "$@" > "runs/explore-crop/$name.log" 2>&1
