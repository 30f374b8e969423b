"""The figures docs/results.md opens with, from a sweep's reports (its tables: summarize.py): PNGs, Agg backend.
For the demo backbone's sweep (sweep.DEFAULT_OUT), also e2vpt - full against the probe over every backbone.

    python -m training.experiments.plots runs/vtab docs/img/results      # the sweep's reports -> the figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.experiments.reports import BackbonePoint, Score, backbone_points, curve_points, load
from training.experiments.sweep import BACKBONE_RERUNS, DEFAULT_OUT, METHODS, REPO, TASKS

MARKERS = dict(zip(METHODS, "osD^v", strict=True))
# one colour per method on every figure and panel, whichever methods a panel has (matplotlib's default cycle)
COLORS = {m: f"C{i}" for i, m in enumerate(METHODS)}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: the plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_params(plt, reports: dict, path: Path) -> Path:
    """One panel per task: test accuracy (mean +- sd) against tuned parameters, log x."""
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.6), sharey=False)
    for ax, task in zip(axes, TASKS, strict=True):
        for m in METHODS:
            r = reports.get((task, m))
            if r is None:
                continue
            s = Score.of(r)
            ax.errorbar(r["metrics"]["tuned_params"], 100 * s.mean, yerr=100 * s.sd, marker=MARKERS[m], capsize=3,
                        linestyle="none", label=m, color=COLORS[m])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a panel spanning < 1 decade
        ax.set_title(task)
        ax.set_xlabel("tuned parameters (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    return _save(plt, fig, path, legend_from=axes)


def task_bars(plt, reports: dict, path: Path) -> Path:
    """Grouped bars: one group per task, one bar per method, error bars = sd over seeds."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 3.8))
    methods = [m for m in METHODS if any((t, m) in reports for t in TASKS)]
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(TASKS))
    for i, m in enumerate(methods):
        got = [Score.of(reports[(t, m)]) if (t, m) in reports else None for t in TASKS]
        ax.bar(x + i * width, [100 * s.mean if s else 0 for s in got], width,
               yerr=[100 * s.sd if s else 0 for s in got], capsize=2, label=m, color=COLORS[m])
    ax.set_xticks(x + width * (len(methods) - 1) / 2, list(TASKS))
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, ncol=len(methods))
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def training_curves(plt, reports: dict, path: Path) -> Path:
    """Training loss per epoch of each run's final stage (e2vpt: the rewound prompts), one panel per task."""
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.4))
    for ax, task in zip(axes, TASKS, strict=True):
        for m in METHODS:
            history = reports.get((task, m), {}).get("history") or []
            if not history:
                continue
            last = history[-1]["stage"]
            points = [h for h in history if h["stage"] == last]
            ax.plot([h["epoch"] for h in points], [h["train_loss"] for h in points], marker=MARKERS[m],
                    markersize=3, label=m, color=COLORS[m])
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss")
    return _save(plt, fig, path, legend_from=axes)


def pruning_curve(plt, reports: dict, path: Path) -> Path | None:
    points = curve_points(reports)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for task, pts in points.items():
        ax.errorbar([100 * f for f, _ in pts], [100 * s.mean for _, s in pts], yerr=[100 * s.sd for _, s in pts],
                    marker="o", capsize=3, label=task)
    ax.set_xlabel("visual prompts pruned (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def gap_vs_probe(plt, points: list[BackbonePoint], path: Path) -> Path:
    """e2vpt - full per task and on the 4-task mean against each backbone's frozen-feature probe (the table
    across the backbones, drawn): did better features close the gap?"""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    probes = [p.probe for p in points]
    for i, task in enumerate(TASKS):
        ax.plot(probes, [p.gap(task) for p in points], marker="osD^"[i % 4], color=f"C{i}", label=task)
    ax.plot(probes, [p.mean_gap() for p in points], color="black", linewidth=2.5, marker="o",
            label="mean of the 4 tasks")
    ax.axhline(-5, color="grey", linestyle="--", linewidth=1, label="issue 21's goal for the mean")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("frozen-feature probe of the backbone, mean of gtsrb, dtd10, sign-digits (%)")
    ax.set_ylabel("e2vpt - full fine-tuning (test acc, points)")
    ax.set_title("e2vpt's distance to full fine-tuning, one point per backbone", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: no point covered
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _save(plt, fig, path: Path, legend_from=()) -> Path:
    """Panels share one legend (a method missing from the last panel still gets its entry)."""
    labelled: dict[str, object] = {}
    for ax in legend_from:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if labelled:  # in a margin of its own, so it never covers a panel's points
        fig.legend(list(labelled.values()), list(labelled), fontsize=8, loc="center right")
        fig.tight_layout(rect=(0, 0, 0.92, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(reports: dict, out_dir: Path, points: list[BackbonePoint] | None = None) -> list[Path]:
    """The sweep's figures; with `points` (reports.backbone_points), the one across the backbones too."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [accuracy_vs_params(plt, reports, out_dir / "accuracy_vs_params.png"),
               task_bars(plt, reports, out_dir / "task_bars.png"),
               training_curves(plt, reports, out_dir / "training_curves.png"),
               pruning_curve(plt, reports, out_dir / "pruning_curve.png")]
    if points and len(points) > 1:
        written.append(gap_vs_probe(plt, points, out_dir / "gap_vs_probe.png"))
    return [p for p in written if p is not None]


def across_backbones(root: Path) -> list[BackbonePoint] | None:
    """The points of the figure across the backbones when root is the demo backbone's sweep (sweep.DEFAULT_OUT,
    the page that shows it; an earlier backbone's page has no such figure), else None. A point whose e2vpt and
    full runs of a task held validation out differently (reruns half done) stops it in one line."""
    if (REPO / DEFAULT_OUT).resolve() != root.resolve():
        return None
    points = backbone_points(DEFAULT_OUT, REPO)
    mixed = [f"{p.label} ({', '.join(p.mixed_splits())})" for p in points if p.mixed_splits()]
    if mixed:
        raise SystemExit(f"error: e2vpt and full held validation out differently on {'; '.join(mixed)}: finish "
                         f"the reruns under {BACKBONE_RERUNS} first")
    return points


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the sweep's --out (its */*.report.json)")
    p.add_argument("out_dir", type=Path, help="where the PNGs go")
    args = p.parse_args(argv)
    for path in write_plots(load(args.root), args.out_dir, across_backbones(args.root)):
        print(path)


if __name__ == "__main__":
    main()
