#!/bin/bash
# usage: [SCRIPT=...partial_ft.py] run.sh NAME TASK METHOD LR [extra...]   (seeds 2, no hp search, the sweep's schedule)
cd "$(git rev-parse --show-toplevel)"
name=$1; task=$2; method=$3; lr=$4; shift 4
case $task in gtsrb) data=gtsrb.tar; vg=(--val-group '^([^/]+/\d+)_');; dtd10) data=dtd10.tar; vg=();; sign-digits) data=sign_digits.tar; vg=();; fashion-mnist) data=X; vg=();; esac
PYTHONPATH=. nice -n 19 .venv/bin/python "${SCRIPT:-runs/explore-spt/scripts/spt_explore.py}" train --data $( [ $task = fashion-mnist ] && echo fmnist:/usr/share/datasets/fashion-mnist || echo ../shared/datasets/$data ) \
  --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
  --out runs/explore-spt/$name.safetensors --epochs 12 --batch-size 32 --optimizer adamw --threads 1 --no-progress \
  --seed 0 --task-name $task --seeds 2 "${vg[@]}" --no-hp-search --lr $lr --weight-decay 0.01 \
  --method $method "$@" > runs/explore-spt/$name.log 2>&1
