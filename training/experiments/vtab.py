"""The result runs of docs/results.md: 5 methods x 4 tasks (VTAB-1k style), the Table-4 ablation, a pruning curve.

Every main run (method x task) is one `python -m training.cli train ...` subprocess with --threads 1 that
chooses lr x weight decay on its validation split (--hp-search) and then trains the chosen configuration with
--seeds seeds (mean +- sd in its report); `--workers` of them run at once. The ablation and pruning-curve runs
of a task take the lr and weight decay its main e2vpt run chose (so the rows differ only in what the ablation
changes, not in a noisy grid's pick); they wait for that run. Single-thread runs because the cores are shared:
a two-thread run stalls at every OpenMP barrier when another process holds one of the cores. A run whose
report exists is skipped, so a killed sweep resumes where it stopped (a run cut short restarts from its
beginning). Logs land in OUT/<task>/<run>.log, artifacts and reports beside them, one JSON line per finished
run in OUT/runs.jsonl.

    python -m training.experiments.vtab --backbone assets/backbones/vit_tiny_p4_32_cifar10_30ep.safetensors \
        --out runs/vtab --epochs 12 --hp-epochs 4 --seeds 3 --workers 2 --dry-run   # the plan and its size
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
TASKS = {"gtsrb": str(DATASETS / "gtsrb.tar"), "dtd10": str(DATASETS / "dtd10.tar"),
         "sign-digits": str(DATASETS / "sign_digits.tar"), "fashion-mnist": "fmnist:/usr/share/datasets/fashion-mnist"}
METHODS = {"e2vpt": ["--method", "e2vpt", "--search"], "vpt-deep": ["--method", "vpt-deep"],
           "vpt-shallow": ["--method", "vpt-shallow"], "linear": ["--method", "linear"],
           "full": ["--method", "full"]}
NO_PRUNING = ["--token-prune", "0", "--segment-prune", "0"]
# Table 4 of the paper, every row through the e2vpt code path (same init, schedule and head); the last row,
# visual + key-value + pruning, is the main e2vpt run of the same task
ABLATION = {"abl-visual": ["--method", "e2vpt", "--kv-tokens", "0", *NO_PRUNING],
            "abl-kv-only": ["--method", "e2vpt", "--visual-tokens", "0", *NO_PRUNING],
            "abl-visual-kv": ["--method", "e2vpt", *NO_PRUNING],
            "abl-visual-prune": ["--method", "e2vpt", "--kv-tokens", "0", "--search"]}
# accuracy against the fraction of visual prompt tokens pruned (token pruning only; 0 is abl-visual-kv)
CURVE_FRACTIONS = (0.25, 0.5, 0.75, 0.9)


def curve_run(fraction: float) -> tuple[str, list[str]]:
    return f"curve-tp{round(100 * fraction):02d}", ["--method", "e2vpt", "--token-prune", str(fraction),
                                                    "--segment-prune", "0"]


HP_SOURCE = "e2vpt"  # the main run whose chosen lr / weight decay the ablation and curve runs of its task reuse


def jobs(args) -> list[tuple[str, str, list[str], bool]]:
    """(task, run name, extra args, reuses the task's e2vpt hp) in priority order: the demo prompt sets (e2vpt)
    first, the curve last. The order matters: a run that reuses hp is queued after the run it waits for."""
    order = [m for m in METHODS if m in args.methods]
    out = [(t, m, METHODS[m], False) for m in order for t in args.tasks]
    reuse = args.hp_search  # without a search there is no choice to reuse
    out += [(task, name, extra, reuse) for task in args.ablation_tasks for name, extra in ABLATION.items()]
    if args.curve_task:
        out += [(args.curve_task, *curve_run(f), reuse) for f in CURVE_FRACTIONS]
    return out


def missing_data(tasks: set[str]) -> list[str]:
    from training.data import data_source
    from training.imagefolder import DatasetError

    out = []
    for task in sorted(tasks):
        try:
            data_source(TASKS[task])
        except DatasetError as e:
            out.append(f"{task}: {e}")
    return out


def report_path(out: str, task: str, name: str) -> Path:
    return Path(out) / task / f"{name}.report.json"  # written last, with the artifact: the run is done


def hp_args(args, task: str, reuse: bool) -> list[str]:
    if not args.hp_search:
        return ["--no-hp-search"]
    source = report_path(args.out, task, HP_SOURCE)
    chosen = (json.loads(source.read_text()).get("hp_search") or {}).get("chosen") \
        if reuse and source.exists() else None
    if chosen:
        return ["--no-hp-search", "--lr", str(chosen["lr"]), "--weight-decay", str(chosen["weight_decay"])]
    return ["--hp-search", *(["--hp-epochs", str(args.hp_epochs)] if args.hp_epochs else [])]


def run_one(args, task: str, name: str, extra: list[str], reuse: bool, waits_for: Future | None = None) -> dict:
    out_dir = Path(args.out) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"{name}.safetensors"
    report = report_path(args.out, task, name)
    if report.exists():
        return {"task": task, "run": name, "skipped": True}
    if waits_for is not None:
        waits_for.result()  # its failure shows in its own row; this run then searches its own hp
    cmd = [sys.executable, "-m", "training.cli", "train", "--data", TASKS[task], "--backbone", args.backbone,
           "--out", str(artifact), "--epochs", str(args.full_epochs if name == "full" and args.full_epochs
                                                    else args.epochs), "--batch-size", str(args.batch_size),
           "--optimizer", args.optimizer, "--threads", "1", "--no-progress", "--seed", str(args.seed),
           "--task-name", task, "--seeds", str(args.seeds), *hp_args(args, task, reuse), *extra]
    t0 = time.time()
    with open(out_dir / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    row = {"task": task, "run": name, "rc": rc, "seconds": round(time.time() - t0, 1), "cmd": " ".join(cmd)}
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
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--full-epochs", type=int, default=0, help="epochs for `full` (0: --epochs); an epoch of "
                   "full fine-tuning costs about 3x a prompt epoch on CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--ablation-tasks", nargs="*", default=["gtsrb", "dtd10"], choices=list(TASKS),
                   help="tasks of the Table-4 ablation (none: skip it)")
    p.add_argument("--curve-task", default="dtd10", help="task of the pruning curve ('' to skip it)")
    p.add_argument("--hp-search", action=argparse.BooleanOptionalAction, default=True,
                   help="the trainer's lr x wd grid on the validation split, per run")
    p.add_argument("--hp-epochs", type=int, default=0, help="epochs per grid point (0: the trainer's default)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the chosen configuration (mean +- sd)")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")
    args = p.parse_args(argv)
    if args.curve_task and args.curve_task not in TASKS:
        p.error(f"--curve-task must be one of {', '.join(TASKS)} or ''")
    todo = jobs(args)
    left = [j for j in todo if not report_path(args.out, j[0], j[1]).exists()]
    missing = missing_data({task for task, *_ in left})
    if missing and not args.dry_run:  # before any run starts, not as a failed row per run an hour later
        p.error("missing data; fix it or leave those tasks out with --tasks / --ablation-tasks / --curve-task: "
                + "; ".join(missing))
    print(f"{len(todo)} runs, {len(todo) - len(left)} already done, {args.workers} at a time", flush=True)
    if args.dry_run:
        for task, name, _, reuse in left:
            print(f"  {task} {name}" + (f" (lr / weight decay of {task} {HP_SOURCE})" if reuse else ""))
        return
    # FIFO pool: a run that waits for its task's e2vpt run was queued after it, so the wait cannot deadlock
    futures: dict[tuple[str, str], Future] = {}
    with ThreadPoolExecutor(args.workers) as pool:
        for task, name, extra, reuse in todo:
            waits_for = futures.get((task, HP_SOURCE)) if reuse else None
            futures[(task, name)] = pool.submit(run_one, args, task, name, extra, reuse, waits_for)
    for f in futures.values():
        f.result()

if __name__ == "__main__":
    main()
