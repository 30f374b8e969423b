"""The result runs of docs/results.md: 4 methods x 4 tasks (VTAB-1k style) + the Table-4 ablation.

Each run is one `python -m training.cli train ...` subprocess with --threads 1; `--workers` of them run at
once. Single-thread runs because the cores are shared: a two-thread run stalls at every OpenMP barrier
when another process holds one of the cores (the demo pretraining went from 1.9 to 12 s/step that way).
A run whose artifact exists is skipped, so a killed sweep resumes where it stopped. Logs land in
OUT/<task>/<run>.log, artifacts and reports beside them, one JSON line per finished run in OUT/runs.jsonl.

    python -m training.experiments.vtab --backbone assets/backbones/vit_tiny_p4_32_cifar10.safetensors \
        --out runs/vtab --epochs 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
TASKS = {"gtsrb": str(DATASETS / "gtsrb.tar"), "dtd10": str(DATASETS / "dtd10.tar"),
         "sign-digits": str(DATASETS / "sign_digits.tar"), "fashion-mnist": "fmnist:/usr/share/datasets/fashion-mnist"}
METHODS = {"e2vpt": ["--method", "e2vpt", "--search"], "vpt-deep": ["--method", "vpt-deep"],
           "linear": ["--method", "linear"], "full": ["--method", "full"]}
# Table 4 of the paper on one task: visual only (= vpt-deep), + key-value, + pruning, all (= e2vpt)
ABLATION = {"abl-visual-kv": ["--method", "e2vpt", "--token-prune", "0", "--segment-prune", "0"],
            "abl-visual-prune": ["--method", "e2vpt", "--kv-tokens", "0", "--search"],
            "abl-kv-only": ["--method", "e2vpt", "--visual-tokens", "0"]}


def jobs(args) -> list[tuple[str, str, list[str]]]:
    """(task, run name, extra args) in priority order: the demo prompt sets (e2vpt) first, the ablation last."""
    order = [m for m in ("e2vpt", "vpt-deep", "linear", "full") if m in args.methods]
    out = [(t, m, METHODS[m]) for m in order for t in args.tasks]
    if args.ablation_task:
        out += [(args.ablation_task, name, extra) for name, extra in ABLATION.items()]
    return out


def run_one(args, task: str, name: str, extra: list[str]) -> dict:
    out_dir = Path(args.out) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"{name}.safetensors"
    if artifact.exists():
        return {"task": task, "run": name, "skipped": True}
    cmd = [sys.executable, "-m", "training.cli", "train", "--data", TASKS[task], "--backbone", args.backbone,
           "--out", str(artifact), "--epochs", str(args.full_epochs if name == "full" and args.full_epochs
                                                    else args.epochs), "--batch-size", str(args.batch_size),
           "--optimizer", args.optimizer, "--threads", "1", "--no-progress", "--seed", str(args.seed),
           "--task-name", task, "--seeds", str(args.seeds), *(() if args.hp_search else ("--no-hp-search",)), *extra]
    t0 = time.time()
    with open(out_dir / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    row = {"task": task, "run": name, "rc": rc, "seconds": round(time.time() - t0, 1), "cmd": " ".join(cmd)}
    report = out_dir / f"{name}.report.json"
    if rc == 0 and report.exists():
        m = json.loads(report.read_text())["metrics"]
        row.update(test_acc=m.get("test_acc"), val_acc=m.get("val_acc"))
    with open(Path(args.out) / "runs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", default="runs/vtab")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--full-epochs", type=int, default=0, help="epochs for `full` (0: --epochs); an epoch of "
                   "full fine-tuning costs about 3x a prompt epoch on CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ablation-task", default="gtsrb", help="'' to skip the ablation")
    p.add_argument("--hp-search", action="store_true", help="the trainer's lr x wd grid per run (off: the fixed "
                   "per-method rates docs/results.md's tables used)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per run (mean +- sd in each report)")
    args = p.parse_args(argv)
    todo = jobs(args)
    print(f"{len(todo)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda j: run_one(args, *j), todo))


if __name__ == "__main__":
    main()
