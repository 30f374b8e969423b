"""The OpenVINO backend against torch: the engine's forward (bank gather + backend) on one mixed-task batch, in
float32 and bfloat16 on each backend, timed interleaved, with every variant's speed ratio to torch float32 and to
torch bfloat16 side by side, and what it costs: max |logit - float32 torch logit| and top-1 agreement.

    python benchmarks/openvino_backend.py                          # demo-sized ViT-Ti, 8 tasks, batches 1 and 32
    python benchmarks/openvino_backend.py --size ti --batches 8,32 --repeats 20 --threads 2 --clock wall

The first call of an OpenVINO variant compiles its shape (reported apart, as "compile s"); the rounds after it
run the compiled graph, as a server does once its batch shapes are warm. bfloat16 runs on every CPU here, also
where it is not native (then it is slow, which is what the ratio shows); dtype auto only tries it where it is.
The record (runs/bench/openvino_backend*.md, common.recorded) names the CPU's avx/amx flags, the OpenVINO
version and what else ran meanwhile.
"""

from __future__ import annotations

import argparse
import time

import common as c
import torch

from promptserve.backends import open_backend

VARIANTS = {"torch float32": ("torch", torch.float32), "torch bfloat16": ("torch", torch.bfloat16),
            "openvino float32": ("openvino", torch.float32), "openvino bfloat16": ("openvino", torch.bfloat16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(c.SIZES), default="demo")
    parser.add_argument("--tasks", type=int, default=8, help="distinct tasks in every batch (round robin)")
    parser.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    c.rounds_flags(parser, repeats=15)
    args = parser.parse_args()
    c.engine_setup(args)
    default = (args.size, args.tasks, args.batches) == ("demo", 8, "1,32")
    with c.recorded("openvino_backend" + ("" if default else f"_{args.size}_{args.batches.replace(',', '_')}")):
        run(args)


def run(args) -> None:
    print(f"{torch.get_num_threads()} thread(s) for torch and for OpenVINO\n")
    bb = c.backbone(args.size)
    sets = c.prompt_sets(bb, args.tasks)
    names = [f"task-{i}" for i in range(len(sets))]
    backends = {}
    for variant, (backend, dtype) in VARIANTS.items():
        backends[variant] = open_backend(backend, bb, dtype=dtype)
        for name, prompt_set in zip(names, sets, strict=True):
            backends[variant].model.add_task(name, prompt_set)
    for batch in (int(b) for b in args.batches.split(",")):
        x, which = c.images(bb, batch), [names[i % len(names)] for i in range(batch)]
        compile_s, logits = {}, {}
        for variant, backend in backends.items():
            start = time.perf_counter()
            logits[variant] = backend(x, which).float()  # the first call: an OpenVINO variant compiles here
            compile_s[variant] = time.perf_counter() - start
        runs = c.interleaved({v: (lambda b=b, x=x, which=which: b(x, which)) for v, b in backends.items()},
                             args.repeats, budget_s=args.budget, clock=args.clock)
        reference = logits["torch float32"]
        valid = torch.isfinite(reference)
        rows = []
        for variant, seconds in runs.items():
            per_batch = c.summary(seconds, args.stat)
            diff = (logits[variant] - reference)[valid].abs().max().item()
            agree = (logits[variant].argmax(1) == reference.argmax(1)).float().mean().item()
            ratios = [c.paired_spread(runs[base], seconds) for base in ("torch float32", "torch bfloat16")]
            rows.append([variant, f"{1e3 * per_batch:.2f}", f"{batch / per_batch:.0f}", *ratios, f"{diff:.1e}",
                         f"{agree:.3f}", f"{compile_s[variant]:.2f}" if "openvino" in variant else "-"])
        c.table(["variant", f"ms/batch ({args.stat})", "images/s", "x torch float32", "x torch bfloat16",
                 "max |dlogit|", "top-1 agree", "compile s"], rows,
                title=f"{c.SIZES[args.size][2]}, batch {batch} over {len(names)} tasks, {len(runs['torch float32'])} "
                      f"rounds, {args.clock} clock (ratios: median (q1-q3) of paired rounds, > 1 = faster)")


if __name__ == "__main__":
    main()
