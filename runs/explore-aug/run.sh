#!/bin/bash
# usage: explore.sh NAME METHOD LR EPOCHS [extra...]
cd "$(git rev-parse --show-toplevel)"
name=$1; method=$2; lr=$3; ep=$4; shift 4
nice -n 19 .venv/bin/python -m training.cli train --data ../shared/datasets/gtsrb.tar \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out runs/explore-aug/$name.safetensors --epochs $ep --batch-size 32 --optimizer adamw --threads 1 --no-progress \
  --seed 0 --task-name gtsrb --seeds 2 --val-group '^([^/]+/\d+)_' --no-hp-search --lr $lr --weight-decay 0.01 \
  --method $method "$@" > runs/explore-aug/$name.log 2>&1
