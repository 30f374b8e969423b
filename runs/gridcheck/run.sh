#!/usr/bin/env bash
# Grid-edge check: the lr grid centred 4x higher (0.64 / 2.56 / 10.24 x wd 0.01 / 0.1), same 4-epoch points
# (warm-up 2 * 4/12 epochs, as in the sweep's grid) for runs whose sweep grid chose its top lr (0.64).
cd "$(dirname "$0")/../.."
declare -A DATA=([gtsrb]=../shared/datasets/gtsrb.tar [dtd10]=../shared/datasets/dtd10.tar
  [sign-digits]=../shared/datasets/sign_digits.tar [fashion-mnist]=fmnist:/usr/share/datasets/fashion-mnist)
for case in gtsrb:e2vpt gtsrb:vpt-deep fashion-mnist:e2vpt sign-digits:e2vpt dtd10:e2vpt fashion-mnist:vpt-deep gtsrb:vpt-shallow; do
  task=${case%%:*}; method=${case#*:}; log=runs/gridcheck/$task-$method.log
  grep -q "chose" "$log" 2>/dev/null && continue
  .venv/bin/python -m training.cli train --data "${DATA[$task]}" --backbone assets/backbones/vit_tiny_p4_32_cifar10_30ep.safetensors \
    --out runs/gridcheck/$task-$method.safetensors --epochs 4 --warmup-epochs 0.6666667 --batch-size 32 --optimizer adamw \
    --threads 1 --no-progress --seed 0 --task-name $task --seeds 1 --hp-search --hp-epochs 4 --lr 2.56 --method $method > "$log" 2>&1
done
