#!/usr/bin/env bash
# The learning-rate grid check of docs/results.md: the sweep runner's --grid-check mode (training/experiments/vtab.py)
# on the prompt-method runs whose grid chose its top lr, logs here. 7 of those 9 are done; `--dry-run` lists the rest.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m training.experiments.vtab --out runs/vtab \
    --backbone assets/backbones/retired/vit_tiny_p4_32_cifar10_30ep.safetensors --methods e2vpt vpt-deep vpt-shallow \
    --workers 1 --grid-check runs/gridcheck "$@"
