"""The runner of docs/results.md's sweep: 5 methods x 4 small stand-in tasks for VTAB-1k (not VTAB itself; the
tasks, methods, ablation and curve are defined in sweep.py), the Table-4 ablation, a pruning curve, and the
check of the learning-rate grids that chose their top rate.

Every main run (method x task) is one `python -m training.cli train ...` subprocess with --threads 1 that
chooses lr x weight decay on its validation split (--hp-search) and then trains the chosen configuration with
--seeds seeds (mean +- sd in its report); `--workers` of them run at once. The ablation and pruning-curve runs
of a task take the lr and weight decay its main e2vpt run chose (so the rows differ only in what the ablation
changes, not in a noisy grid's pick); they wait for that run. Single-thread runs because the cores are shared:
a two-thread run stalls at every OpenMP barrier when another process holds one of the cores. A run whose
report exists is skipped, so a killed sweep resumes where it stopped (a run cut short restarts from its
beginning; a --backbone other than the finished runs' is refused, and so is new work on a task whose finished
runs held validation out otherwise than sweep.VAL_GROUP now does). Logs land in OUT/<task>/<run>.log, artifacts
and reports beside them, one JSON line per finished run in OUT/runs.jsonl.

The grid check (--grid-check DIR) reads the sweep's reports instead: every main run of --tasks x --methods, and
partial row of --partial-tasks, whose grid chose the learning rate at its top (or bottom) searches again on a grid
whose lowest (highest) point is that pick (sweep.grid_check_centre), with the run's weight decays, grid-point epochs
and warm-up, one seed, and a final training as short as a grid point (the pick is the answer). Logs land in
DIR/<task>-<run>.log; a check whose report exists is done. Where a check chose another learning rate (a weight
decay alone is not rerun), the sweep's protocol (its epochs, seeds, batch size and optimizer, the method's extras
or the partial row's --trainable) is then rerun at the new pick into DIR/final/<task>-<run>.*, for the test
accuracy beside the sweep's.

    python -m training.experiments.vtab --backbone assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors \
        --out runs/vtab-distill-mlp5 --epochs 12 --hp-epochs 4 --seeds 3 --workers 2 --dry-run   # the plan and its size
    python -m training.experiments.vtab --backbone ... --out runs/vtab-distill-mlp5 --grid-check runs/gc-mlp5 \
        --partial-tasks gtsrb sign-digits --dry-run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from training.experiments.reports import (
    grid_check_finals,
    grid_check_report,
    grid_check_stem,
    lr_grid_edge,
    pick_moved,
    report_path,
    val_group,
)
from training.experiments.sweep import (
    ABLATION_ROWS,
    CURVE_FRACTIONS,
    DEFAULT_OUT,
    HP_SOURCE,
    METHODS,
    PARTIAL_ROWS,
    RUN_ORDER,
    TASKS,
    VAL_GROUP,
    curve_run,
    grid_check_centre,
    partial_flags,
    run_flags,
    task_flags,
)


def jobs(args) -> list[tuple[str, str, list[str], bool]]:
    """(task, run name, extra args, reuses the task's e2vpt hp) in priority order: the demo prompt sets (e2vpt)
    first, the curve last. The order matters: a run that reuses hp is queued after the run it waits for."""
    order = [m for m in RUN_ORDER if m in args.methods]
    out = [(t, m, METHODS[m], False) for m in order for t in args.tasks]
    reuse = args.hp_search  # without a search there is no choice to reuse
    out += [(task, row.run, row.flags, reuse) for task in args.ablation_tasks for row in ABLATION_ROWS
            if row.flags is not None]
    if args.curve_task:
        out += [(args.curve_task, *curve_run(f), reuse) for f in CURVE_FRACTIONS]
    out += [(task, row.run, partial_flags(row), False) for task in args.partial_tasks for row in PARTIAL_ROWS]
    return out


def grid_check_jobs(args) -> list[tuple[str, str, dict]]:
    """(task, run, its report) of every main run of --tasks x --methods, and partial row of --partial-tasks, whose
    validation grid chose the learning rate at an end."""
    runs = [(task, m) for m in RUN_ORDER if m in args.methods for task in args.tasks]
    runs += [(task, row.run) for task in args.partial_tasks for row in PARTIAL_ROWS]
    out = []
    for task, run in runs:
        path = report_path(args.out, task, run)
        report = json.loads(path.read_text()) if path.exists() else {}
        if report.get("hp_search") and lr_grid_edge(report["hp_search"]):
            out.append((task, run, report))
    return out


def stop_on_missing_data(p: argparse.ArgumentParser, args, tasks: set[str]) -> None:
    """Before any run starts, not as a failed row per run an hour later (a dry run only lists)."""
    from training.data import data_source
    from training.imagefolder import DatasetError

    missing = []
    for task in sorted(tasks):
        try:
            data_source(TASKS[task])
        except DatasetError as e:
            missing.append(f"{task}: {e}")
    if missing and not args.dry_run:
        p.error("missing data; fix it or leave those tasks out with --tasks / --ablation-tasks / --curve-task / "
                "--partial-tasks: " + "; ".join(missing))


def hp_args(args, task: str, reuse: bool) -> list[str]:
    if not args.hp_search:
        return ["--no-hp-search"]
    source = report_path(args.out, task, HP_SOURCE)
    chosen = (json.loads(source.read_text()).get("hp_search") or {}).get("chosen") \
        if reuse and source.exists() else None
    if chosen:
        return ["--no-hp-search", "--lr", str(chosen["lr"]), "--weight-decay", str(chosen["weight_decay"])]
    return ["--hp-search", *(["--hp-epochs", str(args.hp_epochs)] if args.hp_epochs else [])]


def train_command(args, task: str, artifact: Path, epochs: int, seeds: int, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "training.cli", "train", "--data", TASKS[task], "--backbone", args.backbone,
            "--out", str(artifact), "--epochs", str(epochs), "--batch-size", str(args.batch_size),
            "--optimizer", args.optimizer, "--threads", "1", "--no-progress", "--seed", str(args.seed),
            "--task-name", task, "--seeds", str(seeds), *task_flags(task), *flags]


def execute(cmd: list[str], log_path: Path) -> dict:
    """Runs cmd with its output in log_path (the command on its first line); its rc and seconds."""
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "cmd": " ".join(cmd)}


def run_one(args, task: str, name: str, extra: list[str], reuse: bool, waits_for: Future | None = None) -> dict:
    out_dir = Path(args.out) / task
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_path(args.out, task, name)
    if report.exists():
        return {"task": task, "run": name, "skipped": True}
    if waits_for is not None:
        waits_for.result()  # its failure shows in its own row; this run then searches its own hp
    epochs = args.full_epochs if name == "full" and args.full_epochs else args.epochs
    cmd = train_command(args, task, out_dir / f"{name}.safetensors", epochs, args.seeds,
                        [*hp_args(args, task, reuse), *extra])
    row = {"task": task, "run": name, **execute(cmd, out_dir / f"{name}.log")}
    if row["rc"] == 0 and report.exists():
        m = json.loads(report.read_text())["metrics"]
        row.update(test_acc=m.get("test_acc"), val_acc=m.get("val_acc"))
    with open(Path(args.out) / "runs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def grid_check_log(args, task: str, run: str) -> Path:
    return grid_check_stem(args.grid_check, task, run).with_suffix(".log")


def grid_checked(args, task: str, run: str) -> bool:
    """Done once its report exists (written last, as for the sweep's runs): the pick and its grid are in it, and a
    check cut short after its pick is run again rather than left without the report its rerun is decided on."""
    return grid_check_report(args.grid_check, task, run).exists()


def run_grid_check(args, task: str, run: str, report: dict) -> dict:
    """The run's grid again, moved past the end it chose (grid-point epochs and warm-up from its report; no
    --weight-decay, like the sweep's runs, so the same decays), one seed; the method's own extras (e2vpt's pruning
    search) are left out, since only the lr pick is asked; a partial row keeps its --trainable."""
    config, edge = report["config"], lr_grid_edge(report["hp_search"]) or "top"
    grid_epochs = config["hp_epochs"]
    flags = ["--warmup-epochs", str(config["warmup_epochs"] * grid_epochs / config["epochs"]),
             "--hp-search", "--hp-epochs", str(grid_epochs), "--lr", str(grid_check_centre(config["lr_grid"], edge)),
             *run_flags(run, extras=False)]
    log = grid_check_log(args, task, run)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(args, task, log.with_suffix(".safetensors"), grid_epochs, 1, flags)
    row = {"task": task, "grid_check": run, **execute(cmd, log)}
    print(json.dumps(row), flush=True)
    return row


def moved_picks(args, todo: list[tuple[str, str, dict]]) -> list[tuple[str, str, dict, dict]]:
    """(task, run, sweep's report, check's pick) of every finished check that chose another rate."""
    out = []
    for task, run, report in todo:
        path = grid_check_report(args.grid_check, task, run)
        check = json.loads(path.read_text())["hp_search"] if path.exists() else None
        if check and pick_moved(report["hp_search"], check):
            out.append((task, run, report, check["chosen"]))
    return out


def unfinished_finals(args, todo: list[tuple[str, str, dict]]) -> list[tuple[str, str, dict, dict]]:
    return [(task, run, report, pick) for task, run, report, pick in moved_picks(args, todo)
            if not grid_check_report(grid_check_finals(args.grid_check), task, run).exists()]


def run_grid_check_final(args, task: str, run: str, report: dict, pick: dict) -> dict:
    """The sweep's protocol (its epochs and seeds, the method's extras or the partial row's --trainable, no search)
    at the pick the check moved to, so that its test accuracy stands beside the sweep's; the sweep's own tables
    keep the sweep's pick."""
    config = report["config"]
    flags = ["--no-hp-search", "--lr", str(pick["lr"]), "--weight-decay", str(pick["weight_decay"]),
             *run_flags(run)]
    stem = grid_check_stem(grid_check_finals(args.grid_check), task, run)
    stem.parent.mkdir(parents=True, exist_ok=True)
    as_swept = argparse.Namespace(**{**vars(args), "batch_size": config["batch_size"],
                                     "optimizer": config["optimizer"]})
    cmd = train_command(as_swept, task, stem.with_suffix(".safetensors"), config["epochs"], config["seeds"], flags)
    row = {"task": task, "grid_check_final": run, **execute(cmd, stem.with_suffix(".log"))}
    print(json.dumps(row), flush=True)
    return row


def stop_on_another_backbone(p: argparse.ArgumentParser, args, reports: list[dict]) -> None:
    """Runs on another backbone than the sweep's finished ones (a resumed sweep, its grid check and reruns) would
    stand beside its figures as if comparable: refuse in one line (reports without a fingerprint are not checked)."""
    swept = {report["backbone_fingerprint"] for report in reports if "backbone_fingerprint" in report}
    if not swept:
        return
    from promptserve.backbone import Backbone

    if {Backbone.from_file(args.backbone).fingerprint} != swept:
        p.error(f"--backbone {args.backbone} is not the backbone the sweep under {args.out} trained on "
                "(its reports' backbone_fingerprint differs): pass that sweep's backbone")


def stop_on_another_split(p: argparse.ArgumentParser, runs: list[tuple[str, Path]], left: set[str]) -> None:
    """Finished runs (task, report path) of one task tuned on validation splits drawn two ways, or a task with work
    `left` whose finished runs were split otherwise than the sweep now splits it (sweep.VAL_GROUP), would put runs
    tuned on different images in one table: refuse in one line. A finished sweep of an older split stays as it
    is (nothing to add). Missing reports, and reports without a config, are not checked."""
    splits: dict[str, dict[str | None, list[Path]]] = {}
    for task, path in runs:
        report = json.loads(path.read_text()) if path.exists() else {}
        if "config" in report:
            splits.setdefault(task, {}).setdefault(val_group(report), []).append(path)
    stale = [(task, path) for task, by in splits.items()
             if len(by) > 1 or (task in left and set(by) != {VAL_GROUP.get(task)})
             for group, paths in by.items() if group != VAL_GROUP.get(task) for path in paths]
    if stale:
        tasks = sorted({task for task, _ in stale})
        shown = ", ".join(str(path) for _, path in stale[:3]) + (" ..." if len(stale) > 3 else "")
        p.error(f"{len(stale)} finished run(s) held out validation otherwise than sweep.VAL_GROUP now asks for "
                f"{', '.join(tasks)} ({shown}): move them (with their .log and .safetensors) aside to rerun them")


def grid_check(p: argparse.ArgumentParser, args) -> None:
    """The checks, then the sweep's protocol at each pick that moved (both resume: done work is skipped)."""
    todo = grid_check_jobs(args)
    stop_on_another_backbone(p, args, [report for *_, report in todo])
    left = [j for j in todo if not grid_checked(args, j[0], j[1])]
    pending = {task for task, *_ in left + unfinished_finals(args, todo)}
    stop_on_another_split(p, [(task, path) for task, run, _ in todo for path in (
        report_path(args.out, task, run), grid_check_report(args.grid_check, task, run),
        grid_check_report(grid_check_finals(args.grid_check), task, run))], pending)
    stop_on_missing_data(p, args, pending)
    print(f"grid check: {len(todo)} runs chose the lr at an end of their grid, {len(todo) - len(left)} already "
          f"checked, {args.workers} at a time", flush=True)
    if args.dry_run:
        for task, run, report in left:
            edge = lr_grid_edge(report["hp_search"]) or "top"
            print(f"  {task} {run} (chose its grid's {edge}; lr grid centred on "
                  f"{grid_check_centre(report['config']['lr_grid'], edge):g})")
    else:
        with ThreadPoolExecutor(args.workers) as pool:
            for f in [pool.submit(run_grid_check, args, *job) for job in left]:
                f.result()
    finals = unfinished_finals(args, todo)  # the checks just run may have moved more picks
    print(f"then the sweep's protocol at each moved pick: {len(finals)} to run" +
          (" (so far: more may follow the checks above)" if args.dry_run and left else ""), flush=True)
    if args.dry_run:
        for task, run, _, pick in finals:
            print(f"  {task} {run} at lr {pick['lr']:g}, weight decay {pick['weight_decay']:g}")
        return
    with ThreadPoolExecutor(args.workers) as pool:
        for f in [pool.submit(run_grid_check_final, args, *job) for job in finals]:
            f.result()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", default=DEFAULT_OUT)
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
    p.add_argument("--partial-tasks", nargs="*", default=[], choices=list(TASKS),
                   help="tasks on which full fine-tuning also runs with only part of the backbone trainable "
                   "(sweep.PARTIAL_ROWS, each with its own lr grid), and whose partial rows --grid-check checks; "
                   "none by default")
    p.add_argument("--hp-search", action=argparse.BooleanOptionalAction, default=True,
                   help="the trainer's lr x wd grid on the validation split, per run")
    p.add_argument("--hp-epochs", type=int, default=0, help="epochs per grid point (0: the trainer's default)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the chosen configuration (mean +- sd)")
    p.add_argument("--dry-run", action="store_true", help="print the runs still to do and exit")
    p.add_argument("--grid-check", metavar="DIR", help="instead of the sweep: check, into DIR, the grids of the "
                   "main runs of --tasks x --methods (and partial rows of --partial-tasks) under --out that chose "
                   "the learning rate at an end of their grid, then rerun the sweep's protocol (its seeds and epochs) "
                   "at each pick that moved")
    args = p.parse_args(argv)
    if args.curve_task and args.curve_task not in TASKS:
        p.error(f"--curve-task must be one of {', '.join(TASKS)} or ''")
    if args.grid_check:
        grid_check(p, args)
        return
    todo = jobs(args)
    done = [(task, name) for task, name, *_ in todo if report_path(args.out, task, name).exists()]
    left = [j for j in todo if (j[0], j[1]) not in done]
    stop_on_another_backbone(p, args, [json.loads(report_path(args.out, *run).read_text()) for run in done])
    stop_on_another_split(p, [(task, report_path(args.out, task, name)) for task, name in done],
                          {task for task, *_ in left})
    stop_on_missing_data(p, args, {task for task, *_ in left})
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
