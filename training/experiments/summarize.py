"""Markdown tables for docs/results.md from the report.json files a `vtab.py` sweep wrote (its figures: plots.py).

Every accuracy is the mean +- sd over the seeds of the configuration the run chose on its validation split
(`--seeds`; a run with one seed shows no sd). A difference between two methods is marked `*` when it is larger
than twice its standard error, sqrt(sd_a^2/n_a + sd_b^2/n_b): with 3 seeds a rough screen, not a test.

    python -m training.experiments.summarize runs/vtab-distill-mlp5         # tables (markdown)
    python -m training.experiments.summarize runs/vtab-distill-mlp5 --runs  # one row per run found
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.experiments.reports import Score, curve_points, load, lr_grid_edge, scores, val_mean
from training.experiments.sweep import ABLATION_ROWS, DEFAULT_OUT, METHODS, TASKS

# pairs whose difference the main table screens against the seed noise
COMPARISONS = [("e2vpt", "vpt-deep"), ("vpt-deep", "linear"), ("e2vpt", "linear"), ("e2vpt", "full")]


def main_table(reports: dict) -> str:
    s = scores(reports)
    head = ("| method | " + " | ".join(TASKS)
            + " | mean | tuned params (% of backbone) | seeds | train time (s, 4 tasks) |")
    lines = [head, "|" + "---|" * (len(TASKS) + 5)]
    for m in METHODS:
        if not any((t, m) in s for t in TASKS):
            continue
        done = [s[(t, m)].mean for t in TASKS if (t, m) in s]
        mean = f"{100 * sum(done) / len(done):.1f}" + ("" if len(done) == len(TASKS) else f" ({len(done)} tasks)")
        pcts = [reports[(t, m)]["metrics"]["tuned_percent"] for t in TASKS if (t, m) in reports]
        secs = sum(reports[(t, m)]["metrics"]["total_seconds"] for t in TASKS if (t, m) in reports)
        seeds = sorted({s[(t, m)].n for t in TASKS if (t, m) in s})
        cells = [str(s[(t, m)]) if (t, m) in s else "-" for t in TASKS]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} | {min(pcts):.2f}-{max(pcts):.2f} | "
                     f"{'/'.join(map(str, seeds))} | {secs:.0f} |")
    return "\n".join(lines)


def noise_table(reports: dict) -> str:
    """Differences in points, `*` where larger than twice their standard error."""
    s = scores(reports)
    lines = ["| difference (points) | " + " | ".join(TASKS) + " |", "|" + "---|" * (len(TASKS) + 1)]
    for a, b in COMPARISONS:
        cells = []
        for t in TASKS:
            cells.append(_difference(s[(t, a)], s[(t, b)]) if (t, a) in s and (t, b) in s else "-")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _difference(a: Score, b: Score) -> str:
    """a - b in points, `*` where larger than twice its standard error."""
    return f"{100 * (a.mean - b.mean):+.1f}" + (" *" if a.beyond_noise(b) else "")


def hp_table(reports: dict) -> str:
    """What each run's validation grid chose."""
    lines = ["| task | method | lr | weight decay | best val acc | grid points within noise |",
             "|---|---|---|---|---|---|"]
    for t in TASKS:
        for m in METHODS:
            hp = reports.get((t, m), {}).get("hp_search")
            if hp:
                edge = lr_grid_edge(hp)  # a pick at the grid's end says the best rate may lie outside it
                lr = f"{hp['chosen']['lr']:g}" + (f" (grid's {edge})" if edge else "")
                lines.append(f"| {t} | {m} | {lr} | {hp['chosen']['weight_decay']:g} | "
                             f"{100 * hp['best_val_acc']:.1f} | {hp.get('within_noise', '-')} of {len(hp['grid'])} |")
    return "\n".join(lines)


def fit_table(reports: dict) -> str:
    """How well each run fits its train split against how it does on val and test: a method ahead on train and val
    but behind on test is noise or a val/test shift; one that fits no better than the linear head adds nothing."""
    lines = ["| task | method | train acc, last epoch (saved seed) | val acc (mean of seeds) | "
             "test acc (mean of seeds) |", "|---|---|---|---|---|"]
    for t in TASKS:
        for m in METHODS:
            r = reports.get((t, m))
            if r is None:
                continue
            train = [h["train_acc"] for h in r.get("history", []) if "train_acc" in h]
            val = val_mean(r)
            cells = [f"{100 * train[-1]:.1f}" if train else "-",
                     "-" if val is None else f"{100 * val:.1f}", f"{100 * Score.of(r).mean:.1f}"]
            lines.append(f"| {t} | {m} | {' | '.join(cells)} |")
    return "\n".join(lines)


def e2vpt_table(reports: dict) -> str:
    lines = ["| task | test acc | token / segment prune chosen | visual tokens kept | visual prompts pruned (%) | "
             "tuned params | prompt-set file (bytes) | train time (s) |", "|---|---|---|---|---|---|---|---|"]
    for t in TASKS:
        r = reports.get((t, "e2vpt"))
        if r is None:
            continue
        m, c = r["metrics"], r["config"]
        lines.append(f"| {t} | {Score.of(r)} | {c['token_prune']} / {c['segment_prune']} | "
                     f"{m.get('visual_tokens_kept')} / {m.get('visual_tokens_before', m.get('visual_tokens'))} | "
                     f"{100 * m.get('visual_pruned_fraction', 0):.1f} | {m['tuned_params']:,} | "
                     f"{m.get('artifact_bytes', m.get('prompt_set_bytes'))} | {m['total_seconds']:.0f} |")
    return "\n".join(lines)


def ablation_table(reports: dict) -> str:
    tasks = [t for t in TASKS if any((t, row.run) in reports for row in ABLATION_ROWS if row.flags is not None)]
    if not tasks:
        return "(no ablation runs yet)"
    lines = ["| variant | " + " | ".join(f"{t} test acc | vs e2vpt | {t} tuned params" for t in tasks) + " |",
             "|---|" + "---|---|---|" * len(tasks)]
    reference = ABLATION_ROWS[-1].run  # every row is compared with the main e2vpt run
    for label, name, _ in ABLATION_ROWS:
        cells = []
        for t in tasks:
            r, e2vpt = reports.get((t, name)), reports.get((t, reference))
            if r is None:
                cells += ["(not run)", "", ""]
                continue
            s = Score.of(r)
            diff = "" if e2vpt is None or name == reference else _difference(s, Score.of(e2vpt))
            cells += [str(s), diff, f"{r['metrics']['tuned_params']:,}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(reports: dict) -> str:
    curves = curve_points(reports)
    if not curves:
        return "(no pruning-curve runs yet)"
    lines = ["| task | visual prompts pruned (%) | test acc |", "|---|---|---|"]
    for task, points in curves.items():
        lines += [f"| {task} | {100 * f:.0f} | {score} |" for f, score in points]
    return "\n".join(lines)


def runs_table(reports: dict) -> str:
    """Every run found, one row each (for side sweeps such as a longer schedule)."""
    lines = ["| task | run | epochs | test acc | val acc | visual prompts pruned (%) | tuned params | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for (task, run), r in sorted(reports.items()):
        m = r["metrics"]
        val = m.get("val_acc")
        lines.append(f"| {task} | {run} | {r['config']['epochs']} | {Score.of(r)} | "
                     f"{'-' if val is None else f'{100 * val:.1f}'} | {100 * m.get('visual_pruned_fraction', 0):.1f} | "
                     f"{m['tuned_params']:,} | {m['total_seconds']:.0f} |")
    return "\n".join(lines)


def tables(reports: dict, level: str = "##") -> str:
    """Every table, each under a heading of this markdown level."""
    parts = [("Test accuracy (%), mean +- sd over seeds", main_table),
             ("Differences against the seed noise", noise_table),
             ("What the validation grid chose", hp_table), ("Fit, validation and test", fit_table),
             ("E2VPT details", e2vpt_table),
             ("Ablation (Table 4)", ablation_table), ("Pruning curve", curve_table)]
    return "\n\n".join(f"{level} {title}\n\n{table(reports)}" for title, table in parts)


def main(argv=None) -> None:
    args = list(argv if argv is not None else sys.argv[1:])
    root = Path(args[0] if args and not args[0].startswith("--") else DEFAULT_OUT)
    if "--plots" in args:  # not printed as tables: the figures have their own command
        raise SystemExit(f"error: the figures: python -m training.experiments.plots {root} DIR")
    reports = load(root)
    if "--runs" in args:
        print(runs_table(reports))
        return
    print(tables(reports))


if __name__ == "__main__":
    main()
