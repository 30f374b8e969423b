"""Two GPU serving checks (issue 22 item 6), for benchmarks/gpu_check.sh:

1. The mixed-task forward makes no host-device sync: `PromptedViT.forward_batch` on a gathered batch of tasks with
   ragged prompt lengths runs under `torch.cuda.set_sync_debug_mode("error")` (a sync raises).
2. dtype auto on CUDA: `server.precision.decide_dtype` times bf16 and fp16 against float32 on the same backbone and
   tasks and measures their top-1 agreement (random probe images unless --probe DIR names real ones).

    python benchmarks/gpu_serving_check.py [--size b|ti|demo] [--tasks 8] [--probe DIR]
    python benchmarks/gpu_serving_check.py --check-args          # any machine: builds everything on the CPU, no GPU
"""

from __future__ import annotations

import argparse

import common as c
import numpy as np
import torch

import promptserve as ps
from server.precision import decide_dtype, probe_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="b", choices=sorted(c.SIZES))
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--probe", default=None, help="a folder of real images for the agreement check")
    parser.add_argument("--check-args", action="store_true", help="build on the CPU and stop: no GPU work")
    args = parser.parse_args()
    device = torch.device("cpu" if args.check_args else "cuda")
    bb = c.backbone(args.size)
    lengths = [(10, 10), (4, 0), (0, 6), (7, 3)]  # (visual, key/value) tokens per layer: ragged across tasks
    sets = {f"t{i}": c.random_prompt_set(bb, visual=lengths[i % 4][0], kv=lengths[i % 4][1], seed=i)
            for i in range(args.tasks)}
    model = ps.PromptedViT(bb, device=device)
    for name, s in sets.items():
        model.add_task(name, s)
    size = bb.data_config.input_size
    x = c.images(bb, args.batch).to(device)
    batch = model.bank.gather([f"t{i % args.tasks}" for i in range(args.batch)])
    print(f"backbone {c.SIZES[args.size][2]}, {args.tasks} tasks with ragged prompt lengths, batch {args.batch}, "
          f"all_deep={batch.all_deep}, mask-free layers {sum(batch.mask_free or [])}/{bb.num_layers}")
    if args.check_args:
        with torch.inference_mode():
            model.forward_batch(x, batch)
        print("check-args: built and ran on the CPU; nothing measured")
        return

    with c.recorded(f"gpu_serving_check_{args.size}"):
        with torch.inference_mode():
            model.forward_batch(x, batch)  # warm-up: kernels compiled and autotuned before the check
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                model.forward_batch(x, batch)
                print("no host-device sync in forward_batch: OK")
            except RuntimeError as e:
                print(f"FAILED: forward_batch synchronised with the host: {e}")
                raise SystemExit(1) from None
            finally:
                torch.cuda.set_sync_debug_mode("default")

        images = probe_images(args.probe, size, bb.data_config.interpolation) if args.probe else \
            np.random.default_rng(0).integers(0, 256, (256, size, size, 3), dtype=np.uint8)
        fresh = c.backbone(args.size)  # decide_dtype casts copies; the served backbone stays as trained
        choice = decide_dtype(fresh, device, sets, images, budget_s=10.0, batch=args.batch)
        print(f"dtype auto on {torch.cuda.get_device_name(0)}: {choice.dtype} "
              f"({'real' if args.probe else 'random'} probe images: {len(images)})")
        for t in choice.trials:
            print(f"  {t.dtype:9s} speed-up {t.speedup}  agreement {t.agreement}  {'kept' if t.kept else 'dropped'}: "
                  f"{t.why}")


if __name__ == "__main__":
    main()
