"""Mixed-task batching at the engine level: images/s of one batch of 32 images.

    python benchmarks/mixed_batch.py                       # demo-sized backbone + ViT-Ti/16 at 224
    python benchmarks/mixed_batch.py --sizes demo,ti,b     # + ViT-B/16 at 224 (slow on a CPU: few rows)
    python benchmarks/mixed_batch.py --sizes demo --repeats 20

Variants, all on the same frozen weights, timed interleaved in one run:
  bare            the timm backbone alone, no prompts (the floor)
  single          32 images of one task, one forward
  mixed k         32 images spread round-robin over k tasks (2, 8, 32), one forward
  mixed 32 ragged the same with ragged prompt lengths (0..10 per task; padded slots masked)
  regroup k       PEFT-style: one forward per task of the batch, images pre-grouped (its best case)
  per image       32 forwards of one image each
Every task has 10 visual + 10 key/value prompts per layer (ragged row: up to 10). The time columns are the
best (or median) per variant; every ratio ("vs single", "vs bare", the summary) is the median over rounds of
the ratio of two calls made back to back in the same round (common.paired_ratio).
Targets: mixed >= 0.9x single at every size; demo, 32 tasks: mixed >= 1.5x regroup; single / bare within 10%
of the theoretical FLOP ratio (see common.vit_flops).
"""

from __future__ import annotations

import argparse

import common as c
import torch

BATCH, VISUAL, KV = 32, 10, 10
DEFAULT_SIZES = "demo,ti"
REDUCED = ("bare", "single", "mixed 32", "regroup 32")  # ViT-B/16 rows: seconds per forward on a CPU


def variants(bb, names: list[str], ragged: list[str], model, x) -> dict:
    def mixed(k, pool=names):
        tasks = [pool[j % k] for j in range(BATCH)]
        return lambda: model(x, tasks)

    def regroup(k):
        groups = [(x[j::k], [names[j]] * len(x[j::k])) for j in range(k)]  # round-robin assignment, grouped
        return lambda: [model(xs, ts) for xs, ts in groups]

    ones = [x[j:j + 1] for j in range(BATCH)]
    out = {"bare": lambda: bb.model(x), "single": mixed(1)}
    for k in (2, 8, 32):
        out[f"mixed {k}"] = mixed(k)
    out["mixed 32 ragged"] = mixed(32, ragged)
    for k in (2, 8, 32):
        out[f"regroup {k}"] = regroup(k)
    out["per image"] = lambda: [model(xi, names[:1]) for xi in ones]
    return out


def forwards(variant: str) -> int:
    if variant.startswith("regroup"):
        return int(variant.split()[1])
    return BATCH if variant == "per image" else 1


def run_size(size: str, repeats: int, budget_s: float, stat: str, clock: str, reduced: bool) -> dict:
    bb = c.backbone(size)
    sets = c.prompt_sets(bb, BATCH, visual=VISUAL, kv=KV)
    lengths = [(7 * j) % 11 for j in range(BATCH)]  # 0..10, every length present
    sets += [c.random_prompt_set(bb, visual=m, kv=lengths[-1 - j], classes=10, seed=100 + j)
             for j, m in enumerate(lengths)]
    model, all_names = c.prompted_model(bb, sets)
    names, ragged = all_names[:BATCH], all_names[BATCH:]
    x = c.images(bb, BATCH)
    fns = variants(bb, names, ragged, model, x)
    if reduced:
        fns = {k: v for k, v in fns.items() if k in REDUCED}
    with torch.inference_mode():
        times = c.interleaved(fns, repeats, warmup=1 if size == "demo" else 0, budget_s=budget_s, clock=clock)
    t = {k: c.summary(v, stat) for k, v in times.items()}
    speed = {k: c.paired_ratio(times["single"], v) for k, v in times.items()}  # > 1: faster than single
    rows = []
    for k, v in t.items():
        rows.append([k, forwards(k), f"{1e3 * v:,.1f}", f"{BATCH / v:,.1f}", f"{speed[k]:.2f}x",
                     f"{c.paired_ratio(times['bare'], times[k]):.2f}x", len(times[k])])
    _, _, label = c.SIZES[size]
    headers = ["variant", "forwards", f"{clock} ms/batch ({stat})", f"images/{clock}-s", "vs single", "vs bare", "n"]
    c.table(headers, rows, f"### {label}, batch {BATCH}, {VISUAL} visual + {KV} kv prompts per layer")
    theory = c.vit_flops(bb, VISUAL, KV) / c.vit_flops(bb)
    worst = min((k for k in speed if k.startswith("mixed")), key=speed.get)
    return dict(size=label, worst_mixed=f"{worst}: {c.paired_spread(times['single'], times[worst])}",
                mixed32_vs_regroup=c.paired_spread(times["regroup 32"], times["mixed 32"]),
                overhead=c.paired_spread(times["single"], times["bare"]),
                measured_vs_flop=c.paired_ratio(times["single"], times["bare"]) / theory, theory=theory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of demo, ti, b (default demo,ti)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds per size (default: demo 25, ti 5, b 1)")
    parser.add_argument("--budget", type=float, default=80.0, help="seconds per size after which no new round "
                                                                   "starts (at least one round always runs)")
    parser.add_argument("--stat", choices=("best", "median"), default="best")
    parser.add_argument("--all-variants", action="store_true", help="every variant for ViT-B/16 too")
    c.engine_flags(parser)
    args = parser.parse_args()
    # the default sizes' record is mixed_batch.md; other sizes get their own (ViT-B runs apart: minutes per round)
    with c.recorded("mixed_batch" + ("" if args.sizes == DEFAULT_SIZES else "_" + args.sizes.replace(",", "_"))):
        c.engine_setup(args)
        summaries = []
        for size in args.sizes.split(","):
            repeats = args.repeats or {"demo": 25, "ti": 5, "b": 1}[size]
            reduced = size == "b" and not args.all_variants
            summaries.append(run_size(size, repeats, args.budget, args.stat, args.clock, reduced))
        rows = [[s["size"], s["worst_mixed"], s["mixed32_vs_regroup"], s["overhead"], f"{s['theory']:.3f}",
                 f"{s['measured_vs_flop']:.3f}"] for s in summaries]
        c.table(["backbone", "worst mixed / single (>= 0.9)", "mixed 32 vs regroup 32 (demo >= 1.5)",
                 "single / bare", "FLOP ratio", "measured / FLOP (0.9..1.1)"], rows,
                "### Summary (paired ratios: median over rounds, quartiles of the per-round ratios in brackets)")


if __name__ == "__main__":
    main()
