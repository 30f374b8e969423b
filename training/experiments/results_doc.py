"""The result figures quoted in the docs, made from a sweep's committed reports (the same ones summarize.py and
plots.py read), so that docs/results*.md and the README cannot drift from the runs.

    python -m training.experiments.results_doc            # rewrite the generated parts of DOCS
    python -m training.experiments.results_doc --check    # exit 1 if one differs (tests/unit/test_results_doc.py)

A generated part sits between `<!-- results: ROOT PART -->` and `<!-- end results: ROOT PART -->`, ROOT being a
sweep's directory (e.g. runs/vtab-distill-mlp5) and PART one of MADE's keys: `tables` (summarize's tables), `means`
(each method's 4-task mean), `demo-tasks` (e2vpt per task: the demo tasks), `goals` (e2vpt against full and linear,
the figures issue 21 judges), `gains:OTHER_ROOT` (each method's mean against another sweep's), `splits:OTHER_ROOT`
(runs whose validation split was drawn otherwise in another directory, against this sweep's), `gridcheck:CHECK_DIR`
(a grid check's picks against the sweep's), `backbones` (every backbone's sweep up to ROOT against its frozen-
feature probe, sweep.BACKBONE_SWEEPS, with the runs redone under sweep.BACKBONE_RERUNS), `partial` (full fine-tuning
of part of the backbone, sweep.PARTIAL_ROWS, beside the linear head, e2vpt and full; `partial:CHECK_DIR` adds a grid
check of those rows).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import linear_regression

from training.experiments.reports import (
    REPORT_SUFFIX,
    Score,
    backbone_points,
    grid_check_finals,
    grid_check_report,
    grid_check_stem,
    load,
    lr_grid_edge,
    method_means,
    pick_moved,
    probe_mean,
    scores,
    val_group,
    val_mean,
)
from training.experiments.summarize import tables
from training.experiments.sweep import (
    ABLATION_ROWS,
    METHODS,
    PARTIAL_ROWS,
    REPO,
    TASKS,
    TEACHER_PROBE,
)

DOCS = ("README.md", "docs/results.md", "docs/results-distill-mlp-backbone.md", "docs/results-distill-s3-backbone.md",
        "docs/results-distill-mnv1-backbone.md", "docs/results-cifar10-backbone.md")
REGION = re.compile(r"<!-- results: (?P<key>[^ ]+ [^ ]+) -->(?P<body>.*?)<!-- end results: (?P=key) -->", re.S)


def means(reports: dict) -> str:
    ranked = sorted(method_means(reports).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{m} {v:.1f}" for m, v in ranked)


def demo_tasks(reports: dict) -> str:
    s = scores(reports)
    return ", ".join(f"{t} {s[(t, 'e2vpt')]}" for t in TASKS if (t, "e2vpt") in s)


def goals(reports: dict) -> str:
    s, mean = scores(reports), method_means(reports)
    behind = mean["full"] - mean["e2vpt"]

    def per_task(other: str) -> str:
        return ", ".join(f"{t} {100 * (s[(t, 'e2vpt')].mean - s[(t, other)].mean):+.1f}" for t in TASKS)

    return (f"e2vpt is {behind:.1f} points behind full fine-tuning on the 4-task mean ({mean['e2vpt']:.1f} against "
            f"{mean['full']:.1f}; per task {per_task('full')}); e2vpt - linear per task: {per_task('linear')}")


def gains(reports: dict, before: dict) -> str:
    """Each method's 4-task mean against another sweep's (the same protocol on another backbone)."""
    now, then = method_means(reports), method_means(before)
    return ", ".join(f"{m} {then[m]:.1f} -> {now[m]:.1f} ({now[m] - then[m]:+.1f})" for m in METHODS
                     if m in now and m in then)


def grid_check(reports: dict, check_dir: Path) -> str:
    """The grid check's picks (vtab.py --grid-check: each run whose grid chose an end, searched again past it)
    against the sweep's, from the check's own reports (check_dir/<task>-<run>.report.json). Where a pick
    changed and the sweep's protocol was rerun at the new pick (check_dir/final/<task>-<run>.report.json: 3
    seeds, 12 epochs), a last column gives its test accuracy beside the sweep's."""
    finals = {p.name.removesuffix(REPORT_SUFFIX): Score.of(json.loads(p.read_text()))
              for p in sorted(grid_check_finals(check_dir).glob(f"*{REPORT_SUFFIX}"))}
    head = ["task", "method", "sweep's grid: pick (val acc)", "check's grid", "check's pick (val acc)", "same pick"]
    head += ["test at the check's pick (sweep's)"] if finals else []
    lines = [f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
    for (task, method), report in sorted(reports.items()):
        path = grid_check_report(check_dir, task, method)
        if not path.exists():
            continue
        check, sweep = json.loads(path.read_text())["hp_search"], report["hp_search"]
        lrs = ", ".join(f"{lr:g}" for lr in sorted({row["lr"] for row in check["grid"]}))
        same = not pick_moved(sweep, check)
        final = finals.get(grid_check_stem(check_dir, task, method).name)
        test = (f" {final} ({Score.of(report)}) |" if final else " - |") if finals else ""
        lines.append(f"| {task} | {method} | {sweep['chosen']['lr']:g} ({100 * sweep['best_val_acc']:.1f}) | {lrs} | "
                     f"{check['chosen']['lr']:g} ({100 * check['best_val_acc']:.1f}) | {'yes' if same else '**no**'} |"
                     f"{test}")
    return "\n".join(lines)


def split_name(val_group: str | None) -> str:
    """How a run held its validation split out (the trainer's --val-group), as a table cell."""
    return "by image" if not val_group else "by group `" + val_group.replace("|", "\\|") + "`"


def splits(reports: dict, before: dict) -> str:
    """The runs of `before` (another sweep directory, same backbone and protocol) whose validation split was held
    out otherwise (the trainer's --val-group, sweep.VAL_GROUP) against this sweep's runs of the same name: what
    each grid chose, validation and test accuracy (mean of seeds), and how far validation overstated the test."""
    head = ["task", "run", "split: before -> now", "lr / wd chosen: before -> now", "val acc: before -> now",
            "test acc: before -> now", "val - test: before -> now"]
    lines = [f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
    order = [*METHODS, *(row.run for row in ABLATION_ROWS)]  # the tables' order; other runs after, by name

    def rank(key: tuple[str, str]) -> tuple:
        task = list(TASKS).index(key[0]) if key[0] in TASKS else len(TASKS)
        return task, key[0], order.index(key[1]) if key[1] in order else len(order), key[1]

    for key in sorted(set(reports) & set(before), key=rank):
        was, now = before[key], reports[key]
        split = [val_group(r) for r in (was, now)]
        if split[0] == split[1]:
            continue
        picks = [r["hp_search"]["chosen"] if r.get("hp_search") else None for r in (was, now)]  # None: given
        pick = " -> ".join(f"{p['lr']:g} / {p['weight_decay']:g}" if p else
                           f"{r['config']['lr']:g} / {r['config']['weight_decay']:g} (given)"
                           for p, r in zip(picks, (was, now), strict=True))
        val, test = [val_mean(r) for r in (was, now)], [Score.of(r) for r in (was, now)]
        vals = " -> ".join("-" if v is None else f"{100 * v:.1f}" for v in val)
        shift = " -> ".join("-" if v is None else f"{100 * (v - t.mean):+.1f}" for v, t in zip(val, test, strict=True))
        noise = " *" if test[1].beyond_noise(test[0]) else ""
        how = " -> ".join(split_name(g) for g in split)
        lines.append(f"| {key[0]} | {key[1]} | {how} | {pick} | {vals} | {test[0]} -> {test[1]}{noise} | {shift} |")
    return "\n".join(lines)


def gtsrb_splits(reports: dict, runs: tuple[str, ...]) -> str:
    """How `runs` of gtsrb held validation out, as one cell; where they differ, which run used which split."""
    by: dict[str, list[str]] = {}
    for run in runs:
        if ("gtsrb", run) in reports:
            by.setdefault(split_name(val_group(reports[("gtsrb", run)])), []).append(run)
    if len(by) < 2:
        return next(iter(by), "-")
    return "; ".join(f"{', '.join(names)}: {split}" for split, names in by.items())


def across_backbones(root: str, reports_of: Callable[[str], dict], repo: Path) -> str:
    """Every backbone's sweep up to `root` (reports.backbone_points: sweep.BACKBONE_SWEEPS, with the runs redone
    under sweep.BACKBONE_RERUNS in place of the sweeps' own) against its frozen-feature probe: how the methods'
    means and e2vpt's distance to full fine-tuning move as the feature improves; the last column says how each
    row's gtsrb runs held validation out."""
    points = backbone_points(root, repo, reports_of)
    head = ["backbone", "probe, mean of 3", "linear", "e2vpt", "full", "e2vpt - full",
            *(f"e2vpt - full, {t}" for t in TASKS), "gtsrb's validation split"]
    lines = [f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
    cols = {m: [] for m in ("linear", "e2vpt", "full")}
    for point in points:
        mean = method_means(point.reports)
        for m in cols:
            cols[m].append(mean[m])
        gaps = " | ".join(f"{point.gap(t):+.1f}" for t in TASKS)
        lines.append(f"| {point.label} | {point.probe:.1f} | {mean['linear']:.1f} | {mean['e2vpt']:.1f} | "
                     f"{mean['full']:.1f} | {point.mean_gap():+.1f} | {gaps} | "
                     f"{gtsrb_splits(point.reports, tuple(cols))} |")
    blank = " | ".join(["-"] * (len(head) - 2))
    lines.append(f"| teacher (probe only) | {probe_mean(repo / TEACHER_PROBE):.1f} | {blank} |")
    if len(points) > 2:
        def slope(values: list[float]) -> float:
            return linear_regression([p.probe for p in points], values).slope

        per = {m: slope(v) for m, v in cols.items()}
        gap = slope([p.mean_gap() for p in points])
        lines.append(f"| slope per probe point | | {' | '.join(f'{v:+.2f}' for v in per.values())} | {gap:+.2f} | "
                     + " | ".join(f"{slope([p.gap(t) for p in points]):+.2f}" for t in TASKS) + " | |")
        lines += ["", f"Least-squares slopes over these {len(points)} backbones, per point of probe mean: "
                  + ", ".join(f"{m} {v:+.2f}" for m, v in per.items())
                  + f"; e2vpt - full {gap:+.2f} points per probe point (per task: the last row)."]
    return "\n".join(lines)


def partial(reports: dict, check_dir: Path | None = None) -> str:
    """On each task with partial fine-tuning runs (sweep.PARTIAL_ROWS): what trains, how many weights, the lr its
    grid chose, validation and test accuracy, from the linear head through e2vpt and the partial rows to full. With
    check_dir (a grid check of the rows whose grid chose an end, as `gridcheck:` reads one): the check's pick, and
    the test accuracy of the sweep's protocol rerun there (check_dir/final/<task>-<run>.report.json)."""
    rows = [("linear", "the head (linear)"), ("e2vpt", "prompts and the head (e2vpt)"),
            *((row.run, row.label) for row in PARTIAL_ROWS), ("full", "every weight (full)")]
    head = ["task", "what trains", "weights trained", "lr chosen", "val acc (mean of seeds)", "test acc"]
    head += ["grid check: lr chosen", "test at the check's pick"] if check_dir else []
    lines = [f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
    for task in TASKS:
        if not any((task, row.run) in reports for row in PARTIAL_ROWS):
            continue
        for run, label in rows:
            r = reports.get((task, run))
            if r is None:
                continue
            lr = lr_chosen(r["hp_search"]) if r.get("hp_search") else f"{r['config']['lr']:g} (given)"
            val = val_mean(r)
            cells = [task, label, f"{r['metrics']['tuned_params']:,}", lr, "-" if val is None else f"{100 * val:.1f}",
                     str(Score.of(r))]
            if check_dir:
                cells += checked(check_dir, task, run)
            lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def checked(check_dir: Path, task: str, run: str) -> list[str]:
    """[the grid check's pick, the test at it] of one run, '-' where it was not checked or not rerun."""
    path = grid_check_report(check_dir, task, run)
    if not path.exists():
        return ["-", "-"]
    final = grid_check_report(grid_check_finals(check_dir), task, run)
    return [lr_chosen(json.loads(path.read_text())["hp_search"]),
            str(Score.of(json.loads(final.read_text()))) if final.exists() else "-"]


def lr_chosen(hp_search: dict) -> str:
    """The learning rate a validation grid chose, and which end of the grid it is, if it is one."""
    edge = lr_grid_edge(hp_search)
    return f"{hp_search['chosen']['lr']:g}" + (f" ({edge} of its grid)" if edge else "")


MADE = {"tables": lambda reports: tables(reports, level="###"), "means": means, "demo-tasks": demo_tasks,
        "goals": goals, "partial": partial}


def rendered(doc: str, repo: Path = REPO) -> str:
    """`doc` with every generated part made anew from the reports under repo/ROOT."""
    loaded: dict[str, dict] = {}

    def reports_of(root: str) -> dict:
        if root not in loaded:
            loaded[root] = load(repo / root)
        return loaded[root]

    def fill(m: re.Match) -> str:
        key, body = m.group("key"), m.group("body")
        root, part = key.split(" ")
        kind, _, other = part.partition(":")
        if kind == "gains":  # gains:OTHER_ROOT
            text = gains(reports_of(root), reports_of(other))
        elif kind == "splits":  # splits:OTHER_ROOT
            text = splits(reports_of(root), reports_of(other))
        elif kind == "gridcheck":  # gridcheck:CHECK_DIR
            text = grid_check(reports_of(root), repo / other)
        elif kind == "partial" and other:  # partial:CHECK_DIR
            text = partial(reports_of(root), repo / other)
        elif part == "backbones":
            text = across_backbones(root, reports_of, repo)
        elif part in MADE:
            text = MADE[part](reports_of(root))
        else:
            raise LookupError(f"unknown generated part '{part}' (known: {', '.join(MADE)}, gains:ROOT, "
                              "splits:ROOT, gridcheck:DIR, partial:DIR, backbones)")
        text = f"\n{text}\n" if body.startswith("\n") else text  # a block stays a block, a span inside a line a span
        return f"<!-- results: {key} -->{text}<!-- end results: {key} -->"

    return REGION.sub(fill, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc differs")
    args = parser.parse_args(argv)
    stale = []
    for name in DOCS:
        doc = REPO / name
        now = doc.read_text()
        new = rendered(now)
        if new != now:
            stale.append(name)
            if not args.check:
                doc.write_text(new)
    if args.check:
        print(f"differ from the sweeps' reports: {', '.join(stale)}" if stale
              else "every doc matches the sweeps' reports")
    else:
        print(f"rewrote: {', '.join(stale) or 'nothing'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
