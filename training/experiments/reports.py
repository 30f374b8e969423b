"""Reading what a sweep wrote: one report.json per finished run, OUT/<task>/<run>.report.json.

Shared by the runner (which runs are done, what a grid chose), the tables (summarize.py) and the figures
(plots.py), so that neither of those two imports the other. Every accuracy is the test accuracy's mean +- sd over
the seeds of the configuration a run chose on its validation split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from training.experiments.sweep import BACKBONE_RERUNS, BACKBONE_SWEEPS, CURVE_PREFIX, CURVE_UNPRUNED, METHODS, TASKS

REPORT_SUFFIX = ".report.json"  # written last, with the artifact: the run is done


def report_path(out: str | Path, task: str, run: str) -> Path:
    return Path(out) / task / f"{run}{REPORT_SUFFIX}"


def grid_check_stem(check_dir: str | Path, task: str, run: str) -> Path:
    """Where the grid check of (task, run) writes: <stem>.log, <stem>.safetensors, <stem>.report.json."""
    return Path(check_dir) / f"{task}-{run}"


def grid_check_report(check_dir: str | Path, task: str, run: str) -> Path:
    return Path(f"{grid_check_stem(check_dir, task, run)}{REPORT_SUFFIX}")


def grid_check_finals(check_dir: str | Path) -> Path:
    """Where the sweep's protocol, rerun at the picks a grid check moved, writes: <this>/<task>-<run>.*"""
    return Path(check_dir) / "final"


def pick_moved(sweep_hp: dict, check_hp: dict) -> bool:
    """Whether a grid check chose another learning rate than the sweep's grid (its weight decay may differ too)."""
    return check_hp["chosen"]["lr"] != sweep_hp["chosen"]["lr"]


def load(root: Path) -> dict[tuple[str, str], dict]:
    """{(task, run): report} of every finished run under root; exits with one line when there is none."""
    out = {}
    for path in sorted(root.glob(f"*/*{REPORT_SUFFIX}")):
        out[(path.parent.name, path.name.removesuffix(REPORT_SUFFIX))] = json.loads(path.read_text())
    if not out:
        raise SystemExit(f"error: no */*{REPORT_SUFFIX} under {root}: run training.experiments.vtab --out {root} "
                         "first")
    return out


@dataclass(frozen=True)
class Score:
    """Test accuracy of one run over its seeds."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, report: dict) -> Score:
        m = report["metrics"]
        runs = report.get("seeds", {}).get("runs") or [{"test_acc": m["test_acc"]}]
        return cls(m.get("test_acc_mean", m["test_acc"]), m.get("test_acc_sd", 0.0), len(runs))

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f}" + (f" +- {100 * self.sd:.1f}" if self.n > 1 else "")

    def beyond_noise(self, other: Score) -> bool:
        """Is the difference larger than twice its standard error, sqrt(sd_a^2/n_a + sd_b^2/n_b)? With 3 seeds a
        rough screen, not a test."""
        if self.n < 2 or other.n < 2:
            return False
        return abs(self.mean - other.mean) > 2 * math.sqrt(self.sd ** 2 / self.n + other.sd ** 2 / other.n)


def val_mean(report: dict) -> float | None:
    """Validation accuracy over a run's seeds (each seed's model scored on the split its grid chose on)."""
    vals = [row["val_acc"] for row in report.get("seeds", {}).get("runs", []) if row.get("val_acc") is not None]
    return sum(vals) / len(vals) if vals else None


def val_group(report: dict) -> str | None:
    """How a run held its validation split out: its trainer's --val-group pattern, None for image by image."""
    return report.get("config", {}).get("val_group")


def scores(reports: dict) -> dict[tuple[str, str], Score]:
    return {key: Score.of(r) for key, r in reports.items()}


def lr_grid_edge(hp_search: dict) -> str | None:
    """'top' or 'bottom' when a run's validation grid chose a learning rate at its end (the best rate may lie
    outside the grid), else None."""
    lrs = sorted({row["lr"] for row in hp_search["grid"]})
    lr = hp_search["chosen"]["lr"]
    return "top" if lr == lrs[-1] else "bottom" if lr == lrs[0] else None


def curve_points(reports: dict) -> dict[str, list[tuple[float, Score]]]:
    """Per task: (fraction of visual prompts pruned, score), from the curve runs and the unpruned ablation row."""
    out: dict[str, list[tuple[float, Score]]] = {}
    for (task, run), r in reports.items():
        if run.startswith(CURVE_PREFIX) or run == CURVE_UNPRUNED:
            out.setdefault(task, []).append((r["metrics"].get("visual_pruned_fraction", 0.0), Score.of(r)))
    return {t: sorted(p, key=lambda x: x[0]) for t, p in out.items() if len(p) > 1}


def method_means(reports: dict) -> dict[str, float]:
    """{method: mean test accuracy (%) over the four tasks} of the methods run on all four."""
    s = scores(reports)
    return {m: 100 * sum(s[(t, m)].mean for t in TASKS) / len(TASKS)
            for m in METHODS if all((t, m) in s for t in TASKS)}


PROBED = ("gtsrb", "dtd10", "sign-digits")  # the probe mean: the three tasks farthest from CIFAR-10


def probe_mean(path: Path) -> float:
    """Mean probe accuracy (%) over PROBED from a `promptserve probe --json` output (its task names use '_')."""
    acc = {t["task"].replace("_", "-"): t["accuracy"] for t in json.loads(path.read_text())["tasks"]}
    return 100 * sum(acc[t] for t in PROBED) / len(PROBED)


def with_reruns(reports: dict, sweep_root: str, repo: Path) -> dict:
    """A sweep's reports, with those of its runs redone under repo/BACKBONE_RERUNS/<the sweep's folder name> in
    their place; where both carry a backbone fingerprint, they must be the same. A folder with no finished report
    (yet) leaves the sweep's own."""
    folder = repo / BACKBONE_RERUNS / Path(sweep_root).name
    if not any(folder.glob(f"*/*{REPORT_SUFFIX}")):
        return reports
    redone = load(folder)
    prints = {r.get("backbone_fingerprint") for r in (*reports.values(), *redone.values())} - {None}
    if len(prints) > 1:
        raise LookupError(f"the reruns in {folder} trained on another backbone than the sweep {sweep_root}")
    return {**reports, **redone}


class BackbonePoint(NamedTuple):
    label: str  # sweep.BACKBONE_SWEEPS' name of the backbone
    probe: float  # its frozen-feature probe, mean of PROBED (%)
    reports: dict  # its sweep's reports, with the reruns in place (with_reruns)

    def gap(self, task: str) -> float:
        """e2vpt - full on `task`, test accuracy points."""
        return 100 * (Score.of(self.reports[(task, "e2vpt")]).mean - Score.of(self.reports[(task, "full")]).mean)

    def mean_gap(self) -> float:
        """e2vpt - full on the mean of the four tasks (the mean of the per-task gaps)."""
        return sum(self.gap(t) for t in TASKS) / len(TASKS)

    def mixed_splits(self) -> list[str]:
        """Tasks whose e2vpt and full runs held validation out differently (a rerun of one and not the other):
        their gap compares runs tuned on different images."""
        return [t for t in TASKS if len({val_group(self.reports[(t, m)]) for m in ("e2vpt", "full")
                                         if (t, m) in self.reports}) > 1]


def backbone_points(root: str, repo: Path, reports_of: Callable[[str], dict] | None = None) -> list[BackbonePoint]:
    """Every backbone's sweep up to `root` (sweep.BACKBONE_SWEEPS, oldest first) beside its probe; `reports_of`
    loads a sweep by its repo-relative root (default: from repo)."""
    roots = [sweep_root for _, sweep_root, _ in BACKBONE_SWEEPS]
    if root not in roots:
        raise LookupError(f"the backbones' comparison needs a sweep listed in sweep.BACKBONE_SWEEPS "
                          f"({', '.join(roots)}), not {root}")
    reports_of = reports_of or (lambda r: load(repo / r))
    return [BackbonePoint(label, probe_mean(repo / probe), with_reruns(reports_of(sweep_root), sweep_root, repo))
            for label, sweep_root, probe in BACKBONE_SWEEPS[:roots.index(root) + 1]]
