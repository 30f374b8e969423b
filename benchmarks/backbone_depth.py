"""What a deeper demo backbone costs to serve: one mixed-task batch against the number of blocks.

    python benchmarks/backbone_depth.py                    # depths 6 (today's demo), 8, 9; batch 32
    python benchmarks/backbone_depth.py --depths 6 9 12 --threads 2

Issue 21 allows a deeper student only if serving stays within 1.5x of today's cost per image. Each depth is the
demo architecture (ViT-Ti width, 32 px, patch 4) with random weights (speed does not depend on them) and four
tasks of 10 visual + 10 key/value prompts per layer, as the demo tasks are before pruning; each timed call is
one batch that mixes the four tasks (the engine's PromptedViT forward in torch float32; the server's default
backend scales with depth the same way, since every block costs the same). Cost ratios are medians over rounds of
calls made back to back (common.paired_ratio), beside the FLOP model's ratio (common.vit_flops).
"""

from __future__ import annotations

import argparse

import common as c
import torch

TASKS = 4
PROMPTS = 10  # visual and key/value prompts per layer of each task
LIMIT = 1.5  # the bound on cost per image against depth 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 8, 9], help="the first is the reference")
    parser.add_argument("--batch", type=int, default=32)
    c.rounds_flags(parser, repeats=15)
    args = parser.parse_args()
    with c.recorded("backbone_depth"):
        measure(args)


def measure(args) -> None:
    c.engine_setup(args)
    name, kwargs, label = c.SIZES["demo"]
    fns, flops = {}, {}
    for depth in args.depths:
        bb = c.random_backbone(name, 0, **{**kwargs, "depth": depth})
        model, names = c.prompted_model(bb, c.prompt_sets(bb, TASKS, visual=PROMPTS, kv=PROMPTS))
        x, tasks = c.images(bb, args.batch), [names[i % TASKS] for i in range(args.batch)]
        fns[depth] = lambda model=model, x=x, tasks=tasks: model(x, tasks)
        flops[depth] = c.vit_flops(bb, PROMPTS, PROMPTS)
    with torch.inference_mode():
        times = c.interleaved(fns, args.repeats, warmup=1, budget_s=args.budget, clock=args.clock)
    ref = args.depths[0]
    rows = []
    for depth in args.depths:
        t = c.summary(times[depth], args.stat)
        rows.append([depth, f"{1e3 * t:,.1f}", f"{1e3 * t / args.batch:.2f}", f"{flops[depth] / 1e9:.3f}",
                     c.paired_spread(times[depth], times[ref]), f"{flops[depth] / flops[ref]:.3f}",
                     len(times[depth])])
    c.table(["depth", f"{args.clock} ms/batch ({args.stat})", "ms/image", "GFLOP/image",
             f"cost / depth {ref} (q1-q3)", "FLOP ratio", "n"], rows,
            f"### {label.replace('6 layers', 'N layers')}, batch {args.batch} mixing {TASKS} tasks of {PROMPTS} "
            f"visual + {PROMPTS} kv prompts per layer")
    within = [d for d in args.depths if c.paired_ratio(times[d], times[ref]) <= LIMIT]
    print(f"depths within {LIMIT}x of depth {ref}'s cost per image: {', '.join(map(str, within))}")


if __name__ == "__main__":
    main()
