"""What the results sweep of docs/results.md runs, defined once: its tasks and their data, its methods, the
Table-4 ablation, the pruning curve, and how its learning-rate grid check moves a grid up.

The tasks are four small stand-ins for VTAB-1k, not VTAB itself: as in VTAB-1k, each run trains on a
class-balanced subset of 1000 training images and chooses its lr x weight decay on a validation split held out
of them (at most 200), but the datasets are the ones this machine holds, seen at the backbone's 32x32. The runner
is named `vtab` (and writes runs/vtab-*) after that protocol. The runner (vtab.py: the sweep and its grid check),
the tables (summarize.py) and the figures (plots.py) all read these names from here. The grid itself is the
trainer's (training/config.py: LR_FACTORS around a method's DEFAULT_LR, WD_GRID), so nothing here repeats it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from training.config import LR_FACTORS

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / ".." / "shared" / "datasets"
# task -> the trainer's --data, in the order the tables and figures list them
TASKS = {"gtsrb": str(DATASETS / "gtsrb.tar"), "dtd10": str(DATASETS / "dtd10.tar"),
         "sign-digits": str(DATASETS / "sign_digits.tar"), "fashion-mnist": "fmnist:/usr/share/datasets/fashion-mnist"}
# task -> its --val-group (every run of it). GTSRB's training images are frames of tracks
# (`<class>/<track>_<frame>.png`, a few frames of one physical sign each): held out image by image, many
# validation images had a twin from their track in training, and every method scored far higher on validation
# than on the test set's unseen signs (docs/results.md, the splits table); a split by track keeps validation unseen
VAL_GROUP = {"gtsrb": r"^([^/]+/\d+)_"}
# method -> the trainer's flags of its main run, in the order the tables and figures list them (the trainer's)
METHODS = {"linear": ["--method", "linear"], "vpt-shallow": ["--method", "vpt-shallow"],
           "vpt-deep": ["--method", "vpt-deep"], "e2vpt": ["--method", "e2vpt", "--search"],
           "full": ["--method", "full"]}
# the order the sweep starts the main runs: what the demo tasks and the goals (e2vpt against full and
# linear) need first, so a sweep stopped early has measured what its page leads with
RUN_ORDER = ("e2vpt", "linear", "full", "vpt-deep", "vpt-shallow")
HP_SOURCE = "e2vpt"  # the main run whose chosen lr / weight decay the ablation and curve runs of its task reuse

# every backbone's sweep, oldest first, beside its frozen-feature probe (`promptserve probe --json` of the four
# tasks): the last is the demo backbone's (docs/results.md), the others the retired backbones'
BACKBONE_SWEEPS = (("CIFAR-10 only", "runs/vtab", "runs/distill/probe-demo-backbone.json"),
                   ("distilled, 2 stages", "runs/vtab-distill", "runs/distill/probe-distilled.json"),
                   ("3 stages", "runs/vtab-distill-s3", "runs/distill/probe-distilled-s3.json"),
                   ("4 stages (MLP projector)", "runs/vtab-distill-mlp", "runs/distill/probe-mlp.json"),
                   ("5 stages (the demo backbone)", "runs/vtab-distill-mlp5", "runs/distill/probe-mlp5.json"))
TEACHER_PROBE = "runs/distill/probe-teacher.json"
# runs of the earlier sweeps redone on the demo sweep's split (their gtsrb runs of linear, e2vpt and full, held out
# by track: runs/gtsrb-by-track/run.sh), as <this>/<sweep folder>/<task>/<run>.*: the table and the figure across
# the backbones take them in place of the sweeps' own, so that every backbone's gtsrb figures rest on one split
BACKBONE_RERUNS = "runs/gtsrb-by-track"
DEFAULT_OUT = BACKBONE_SWEEPS[-1][1]


def task_flags(task: str) -> list[str]:
    """The trainer's flags every run of `task` takes, whatever its method."""
    return ["--val-group", VAL_GROUP[task]] if task in VAL_GROUP else []


class AblationRow(NamedTuple):
    label: str
    run: str
    flags: list[str] | None  # None: the task's main run, not a run of its own


NO_PRUNING = ["--token-prune", "0", "--segment-prune", "0"]
# Table 4 of the paper, every row through the e2vpt code path (same init, schedule and head); the last row,
# visual + key-value + pruning, is the main e2vpt run of the same task, and the others are compared with it
ABLATION_ROWS = [
    AblationRow("visual prompts only", "abl-visual", ["--method", "e2vpt", "--kv-tokens", "0", *NO_PRUNING]),
    AblationRow("key-value prompts only", "abl-kv-only", ["--method", "e2vpt", "--visual-tokens", "0", *NO_PRUNING]),
    AblationRow("visual + key-value", "abl-visual-kv", ["--method", "e2vpt", *NO_PRUNING]),
    AblationRow("visual + pruning", "abl-visual-prune", ["--method", "e2vpt", "--kv-tokens", "0", "--search"]),
    AblationRow("visual + key-value + pruning (e2vpt)", "e2vpt", None)]


class PartialRow(NamedTuple):
    label: str
    run: str
    trainable: str  # the trainer's --trainable: which of the backbone copy's weights full fine-tuning may move
    lr: float | None = None  # the lr grid's centre; None: full fine-tuning's


# Where full fine-tuning's lead comes from: `full` with only part of the copy trainable, each row with its own lr
# grid (VPT's Partial-k tunes the last k blocks; the first blocks are tried too). The demo student has 6 blocks;
# the stem (about 1% of the weights, near e2vpt's size) gets a grid centred 40x above full's: few weights, large steps.
PARTIAL_ROWS = [
    PartialRow("the first two blocks", "partial-first2", r"^blocks\.[01]\."),
    PartialRow("the last two blocks and the final norm", "partial-last2", r"^(blocks\.[45]\.|norm\.)"),
    PartialRow("the stem: patch and position embeddings, class token", "partial-stem",
               r"^(patch_embed|pos_embed|cls_token)", lr=0.04),
]


PARTIAL_BY_RUN = {row.run: row for row in PARTIAL_ROWS}


def partial_flags(row: PartialRow, with_lr_centre: bool = True) -> list[str]:
    """The trainer's flags of a partial row; without its grid's centre for a run that sets its own lr (the grid
    check and its reruns)."""
    return ["--method", "full", "--trainable", row.trainable,
            *(["--lr", str(row.lr)] if row.lr and with_lr_centre else [])]


def run_flags(run: str, extras: bool = True) -> list[str]:
    """What a main run or a partial row trains, as the trainer's flags, for a run whose lr is set elsewhere (the
    grid check and its reruns): a method's flags (without `extras`, such as e2vpt's pruning search, only which
    method), or a partial row's without its grid's centre."""
    if run in PARTIAL_BY_RUN:
        return partial_flags(PARTIAL_BY_RUN[run], with_lr_centre=False)
    return METHODS[run] if extras else ["--method", run]


# accuracy against the fraction of visual prompt tokens pruned (token pruning only)
CURVE_FRACTIONS = (0.25, 0.5, 0.75, 0.9)
CURVE_PREFIX = "curve-tp"
CURVE_UNPRUNED = "abl-visual-kv"  # the curve's 0 point is this ablation row


def curve_run(fraction: float) -> tuple[str, list[str]]:
    return f"{CURVE_PREFIX}{round(100 * fraction):02d}", ["--method", "e2vpt", "--token-prune", str(fraction),
                                                         "--segment-prune", "0"]


def grid_check_centre(lr_grid: list[float], edge: str = "top") -> float:
    """The grid check's lr centre for a run whose grid chose the rate at its `edge`: the trainer's factors around
    it put the new grid's end on the old pick, so the check also reproduces the old pick's score. Top: the new
    grid's lowest point is the old top (0.04 / 0.16 / 0.64 -> 0.64 / 2.56 / 10.24); bottom: its highest point
    is the old bottom (-> 0.0025 / 0.01 / 0.04)."""
    if edge == "bottom":
        return round(min(lr_grid) / max(LR_FACTORS), 6)
    return round(max(lr_grid) / min(LR_FACTORS), 6)
