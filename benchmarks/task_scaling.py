"""Task scaling: images/s of batch 32 with 1, 10, 100 and 1,000 resident tasks, and bank memory per task.

    python benchmarks/task_scaling.py
    python benchmarks/task_scaling.py --tasks 1 10 100 1000 10000 --repeats 20

Each resident count is its own PromptedViT (one PromptBank) over the same frozen demo-sized backbone; every task
has 10 visual + 10 key/value prompts per layer and 10 classes. A batch's 32 task names are drawn from the
resident tasks with uniform or Zipf (s = 1) popularity; each round uses the next of a few pre-drawn batches,
and the timed call is the serving call `model(images, tasks)` (bank gather included). "vs 1 task" is the median
over rounds of the ratio of calls made back to back (common.paired_ratio).
Target: 1,000 tasks >= 0.9x one task.
"""

from __future__ import annotations

import argparse
import time

import common as c
import torch

from promptserve.promptset import prompt_set_nbytes

BATCH, VISUAL, KV, CLASSES = 32, 10, 10, 10


def draw(n_tasks: int, popularity: str, batches: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    weights = torch.ones(n_tasks) if popularity == "uniform" else 1.0 / torch.arange(1, n_tasks + 1)
    return [torch.multinomial(weights, BATCH, replacement=True, generator=g).tolist() for _ in range(batches)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 10, 100, 1000], help="resident task counts")
    parser.add_argument("--size", default="demo", choices=sorted(c.SIZES))
    c.rounds_flags(parser, repeats=30)
    args = parser.parse_args()
    with c.recorded("task_scaling" + ("" if args.size == "demo" else f"_{args.size}")):
        measure(args)


def measure(args) -> None:
    c.engine_setup(args)
    bb = c.backbone(args.size)
    x = c.images(bb, BATCH)
    sets = c.prompt_sets(bb, max(args.tasks), visual=VISUAL, kv=KV, classes=CLASSES)
    fns, info = {}, {}
    for n in args.tasks:
        t0 = time.perf_counter()
        model, names = c.prompted_model(bb, sets[:n])
        add_ms = 1e3 * (time.perf_counter() - t0) / n
        for pop in ("uniform", "zipf") if n > 1 else ("-",):
            drawn = draw(n, "uniform" if pop == "-" else pop, 8, seed=n)
            batches = [[names[j] for j in b] for b in drawn]
            counter = iter(range(1 << 30))
            key = f"{n:,} {pop}"
            fns[key] = lambda m=model, b=batches, it=counter: m(x, b[next(it) % len(b)])
            info[key] = dict(n=n, pop=pop, distinct=sum(len(set(b)) for b in drawn) / len(drawn),
                             bank=model.bank.nbytes(), add_ms=add_ms, cap=model.bank._cap)
    with torch.inference_mode():
        times = c.interleaved(fns, args.repeats, warmup=1, budget_s=args.budget, clock=args.clock)
    t = {k: c.summary(v, args.stat) for k, v in times.items()}
    base = next(iter(t))
    rows = []
    for k, v in t.items():
        i = info[k]
        rows.append([f"{i['n']:,}", i["pop"], f"{i['distinct']:.1f}", f"{1e3 * v:,.1f}", f"{BATCH / v:,.1f}",
                     c.paired_spread(times[base], times[k]), f"{i['bank'] / 2**20:,.2f}",
                     f"{i['bank'] / i['n'] / 1024:,.1f}",                     f"{i['add_ms']:.2f}", len(times[k])])
    c.table(["resident tasks", "popularity", "distinct tasks/batch", f"{args.clock} ms/batch ({args.stat})",
             f"images/{args.clock}-s", f"vs {args.tasks[0]} task (q1-q3)", "bank MiB", "bank KiB/task", "add_task ms",
             "n"], rows, f"### {c.SIZES[args.size][2]}, batch {BATCH}, {VISUAL} visual + {KV} kv prompts per layer, "
                         f"{CLASSES} classes")
    print(f"one prompt set's own tensors: {prompt_set_nbytes(sets[0]) / 1024:.1f} KiB "
          f"(the bank keeps shared key/value prompts twice, as key and value, and rounds capacity up to a power "
          f"of two)")


if __name__ == "__main__":
    main()
