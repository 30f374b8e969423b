"""The engine's forward in other precisions and layouts against fp32: speed and what it costs in accuracy.

    python benchmarks/serving_precision.py                         # demo backbone + the four demo tasks
    python benchmarks/serving_precision.py --variants fp32,bf16-autocast --max-images 200 --budget-s 60

Variants of one mixed-task batch of 32 (the engine's `PromptedViT.classify`), timed interleaved:
  fp32            the server's default (dtype float32)
  bf16            weights and activations in bfloat16 (the server's `dtype: bfloat16`)
  bf16-autocast   fp32 weights, matmuls under torch.autocast(cpu, bfloat16)
  channels-last   fp32, images in channels-last memory format (only the patch-embedding conv sees it)
  compile         fp32, `torch.compile` of the prompted forward (inductor; compile time reported apart)
Accuracy cost, on each demo task's test set (at most --max-images per task, from ../shared/datasets and the
Fashion-MNIST IDX files): max |logit - fp32 logit| over valid classes, top-1 agreement with fp32, and accuracy.
Images/s is per engine thread; ratios are paired per round (common.paired_ratio). A variant whose forward
fails here (e.g. no C compiler for inductor) is reported as such, not dropped silently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import common as c
import numpy as np
import torch

import promptserve as ps
from promptserve.preprocess import normalise
from server.settings import DEMO_BACKBONE

BATCH = 32
BACKBONE = Path(DEMO_BACKBONE)
DATASETS = c.ROOT.parent / "shared/datasets"
# demo task -> its data (what `promptserve eval --data` takes)
TASK_DATA = {"gtsrb": str(DATASETS / "gtsrb.tar"), "dtd10": str(DATASETS / "dtd10.tar"),
             "sign-digits": str(DATASETS / "sign_digits.tar"),
             "fashion-mnist": "fmnist:/usr/share/datasets/fashion-mnist"}
VARIANTS = ("fp32", "bf16", "bf16-autocast", "channels-last", "compile")


class Variant:
    """One way to run the engine's forward: a model (own copy of the weights when the dtype differs)."""

    def __init__(self, name: str, backbone_file: Path, tasks: dict[str, ps.PromptSet]):
        self.name = name
        bb = ps.Backbone.from_file(backbone_file)  # own weights: bf16 casts them in place
        bb.fingerprint  # noqa: B018 - hash the weights as trained, before a cast rounds them (as the engine does)
        self.model = ps.PromptedViT(bb, dtype=torch.bfloat16 if name == "bf16" else None)
        for task, s in tasks.items():
            self.model.add_task(task, s)
        self.compile_s = 0.0
        self._forward = self.model.forward_batch
        if name == "compile":
            # the forward's data-dependent branches and per-layer prompt lengths make dynamo recompile per
            # layer; past its default limit (8) it silently falls back to eager, which would measure nothing
            torch._dynamo.config.recompile_limit = 64
            self._forward = torch.compile(self.model.forward_batch, dynamic=False)

    def __call__(self, x: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        if self.name == "channels-last":
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.name == "bf16-autocast"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return self._forward(x, self.model.bank.gather(tasks)).float()

    def warm(self, x: torch.Tensor, tasks: list[str]) -> None:
        t0 = time.perf_counter()
        self(x, tasks)
        if self.name == "compile":
            self.compile_s = time.perf_counter() - t0


def test_images(task: str, ps_labels: list[str], size: int, interpolation: str, limit: int, seed: int = 0):
    """Up to `limit` test images of the task (a seeded sample), uint8 (N, S, S, 3), labels in the set's order."""
    from training.data import load_splits

    (arr,) = load_splits(TASK_DATA[task], size, interpolation, progress=False, splits=("test",))
    index = {name: i for i, name in enumerate(ps_labels)}
    y = np.asarray([index[arr.classes[i]] for i in arr.labels], dtype=np.int64)
    pick = np.random.default_rng(seed).permutation(len(y))[:limit]
    return arr.images[pick], y[pick]


def accuracy_cost(variants: dict[str, Variant], data: dict[str, tuple], data_config, ref: str = "fp32") -> dict:
    """Per variant: max |logit - ref logit|, top-1 agreement with ref, accuracy (all tasks' test images)."""
    out = {name: dict(max_diff=0.0, agree=0, correct=0, n=0) for name in variants}
    for task, (imgs, y) in data.items():
        for start in range(0, len(y), BATCH):
            x = normalise(imgs[start:start + BATCH], data_config)
            tasks = [task] * len(x)
            logits = {name: v(x, tasks) for name, v in variants.items()}
            valid = torch.isfinite(logits[ref])
            top_ref = logits[ref].argmax(1)
            for name, lg in logits.items():
                o = out[name]
                o["max_diff"] = max(o["max_diff"], float((lg - logits[ref])[valid].abs().max()))
                o["agree"] += int((lg.argmax(1) == top_ref).sum())
                o["correct"] += int((lg.argmax(1).numpy() == y[start:start + BATCH]).sum())
                o["n"] += len(x)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--budget-s", type=float, default=90.0, help="seconds of timing rounds (then it stops)")
    parser.add_argument("--max-images", type=int, default=300, help="test images per demo task for the accuracy "
                                                                    "columns (0: skip them)")
    parser.add_argument("--backbone", type=Path, default=BACKBONE)
    parser.add_argument("--tasks-dir", type=Path, default=c.ROOT / "assets/tasks")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    c.engine_flags(parser)
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "fp32" not in names:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)} (fp32 is the reference and "
                     "must be among them)")
    if not args.backbone.is_file():
        parser.error(f"--backbone {args.backbone} does not exist (the demo backbone is in assets/backbones)")
    with c.recorded("serving_precision"):
        measure(args, names)


def measure(args, names: list[str]) -> None:
    c.engine_setup(args)

    sets = {p.stem: ps.PromptSet.load(p) for p in sorted(args.tasks_dir.glob("*.safetensors"))}
    variants, failed = {}, {}
    for name in names:
        try:
            v = Variant(name, args.backbone, sets)
            bb = v.model.backbone
            x = c.images(bb, BATCH)
            mix = [list(sets)[j % len(sets)] for j in range(BATCH)]
            v.warm(x, mix)
            variants[name] = v
        except Exception as e:  # noqa: BLE001 - report why a variant cannot run here, keep the others
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            print(f"{name}: cannot run here ({failed[name]})")
    fns = {name: (lambda v=v: v(x, mix)) for name, v in variants.items()}
    times = c.interleaved(fns, args.repeats, warmup=1, budget_s=args.budget_s, clock=args.clock)

    cost = {}
    if args.max_images:
        dc = variants["fp32"].model.backbone.data_config
        data = {t: test_images(t, sets[t].labels, dc.input_size, dc.interpolation, args.max_images)
                for t in sets if t in TASK_DATA}
        cost = accuracy_cost(variants, data, dc)
    rows, record = [], {}
    for name in names:
        if name in failed:
            rows.append([name, "-", "-", "-", "-", "-", "-", failed[name]])
            continue
        t, o = times[name], cost.get(name)
        speed = c.paired_spread(times["fp32"], t)
        rows.append([name, f"{1e3 * c.summary(t, 'median'):,.1f}", f"{BATCH / c.summary(t, 'median'):,.1f}",
                     speed, f"{o['max_diff']:.2e}" if o else "-", f"{100 * o['agree'] / o['n']:.2f}%" if o else "-",
                     f"{100 * o['correct'] / o['n']:.2f}%" if o else "-",
                     f"compile {variants[name].compile_s:.1f} s" if name == "compile" else ""])
        record[name] = dict(ms_per_batch=1e3 * c.summary(t, "median"), vs_fp32=c.paired_ratio(times["fp32"], t),
                            **({k: v for k, v in o.items()} if o else {}))
    n_img = sum(len(v[1]) for v in data.values()) if cost else 0
    c.table(["variant", f"{args.clock} ms/batch (median)", f"images/{args.clock}-s", "speed vs fp32 (q1-q3)",
             "max logit diff", "top-1 agree", "accuracy", "note"], rows,
            f"### Engine forward, demo backbone, mixed batch of {BATCH} over {len(sets)} demo tasks, "
            f"{len(times['fp32'])} rounds; accuracy columns on {n_img} test images "
            f"({', '.join(sets)}, at most {args.max_images} each)")
    if args.json:
        args.json.write_text(json.dumps({"variants": record, "failed": failed}, indent=1))


if __name__ == "__main__":
    main()
