"""What makes a pretraining step of the demo backbone fastest on this machine: bf16 autocast, torch.compile,
channels-last input and batch size against the float32 eager step `promptserve pretrain` takes (issue 11).

Every variant runs the project's one training step (`training.loop.train_epoch`: forward, label-smoothed loss,
backward, clipping, AdamW) on the pretraining recipe's model (PretrainConfig's timm ViT, drop path included) with
random 32x32 inputs: a step's cost does not depend on the pixels. Variants run interleaved (benchmarks/common.py),
so a ratio is measured side by side under the same load; images/s is per variant's own batch size.

    python benchmarks/train_step.py --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved, paired_spread, recorded, set_threads, steady_malloc, table  # puts the repo on sys.path

from training.loop import train_epoch
from training.pretrain import PretrainConfig


def make_step(batch: int, amp: bool = False, compiled: bool = False, channels_last: bool = False, seed: int = 0):
    import timm

    cfg = PretrainConfig(data="-", out="-")
    torch.manual_seed(seed)
    model = timm.create_model(cfg.model, pretrained=False, drop_path_rate=cfg.drop_path, num_classes=10,
                              **cfg.model_kwargs).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    forward = torch.compile(model) if compiled else model
    size = cfg.model_kwargs.get("img_size", 32)
    x = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        train_epoch(forward, opt, params, lambda i: (x, y), 1, lambda s: cfg.lr, 0, grad_clip=1.0,
                    label_smoothing=cfg.label_smoothing, device=torch.device("cpu"), amp=amp, progress=False)
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="batch of the dtype/compile/layout variants")
    p.add_argument("--batches", type=int, nargs="*", default=[32, 128, 256], help="float32 eager batch sizes")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (needs a C++ compiler)")
    p.add_argument("--budget-s", type=float, default=900.0, help="stop after the round that passes this")
    args = p.parse_args(argv)
    with recorded("train_step"):
        measure(args)


def measure(args) -> None:
    set_threads(args.threads)
    print(f"malloc: {'pinned thresholds' if steady_malloc() else 'default'}\n", flush=True)
    b = args.batch
    variants = {"float32 eager": (b, make_step(b)), "bf16 autocast": (b, make_step(b, amp=True)),
                "channels-last input": (b, make_step(b, channels_last=True))}
    if not args.no_compile:
        variants["torch.compile"] = (b, make_step(b, compiled=True))
    for other in args.batches:
        if other != b:
            variants[f"float32 eager, batch {other}"] = (other, make_step(other))
    times = interleaved({k: fn for k, (_, fn) in variants.items()}, args.rounds, warmup=1, budget_s=args.budget_s,
                        clock="wall")
    base = [t / b for t in times["float32 eager"]]  # seconds per image
    rows = []
    for name, (batch, _) in variants.items():
        per_image = [t / batch for t in times[name]]
        rows.append([name, batch, f"{min(times[name]):.2f}", f"{batch / min(times[name]):.1f}",
                     paired_spread(base, per_image)])
    table(["variant", "batch", "best s/step", "images/s", "speed vs float32 eager (median, q1-q3)"], rows,
          title=f"One pretraining step (train_epoch), {args.threads} torch thread(s), {len(base)} rounds, wall clock")


if __name__ == "__main__":
    main()
