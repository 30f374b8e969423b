"""TrainConfig: everything one `promptserve train` run depends on, validated at construction.

Saved (as JSON) inside every artifact's `config` metadata and beside it in report.json, so a result can be
reproduced from the artifact alone. Learning rates are BASE rates for batch 256: the optimizer gets
lr * batch_size / 256 (the paper's scaling rule). `None` means "the method's default" and is resolved
here, so the saved config always holds the value that ran.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

METHODS = ("linear", "vpt-shallow", "vpt-deep", "e2vpt", "full")
OPTIMIZERS = ("sgd", "adamw")
IMPORTANCE = ("abs", "signed")
SEGMENT_RULES = ("global", "per-token")

# per-method base lrs (batch 256): the hp-search grid's centre. Checked on the demo backbone (sign digits,
# 4-epoch runs): SGD at 8 made prompts diverge, AdamW at 0.16 trained stably and beat lower rates on val, for
# prompts and the head alike. Full fine-tuning moves every weight, so it takes a much smaller step.
DEFAULT_LR = {("sgd", "linear"): 8.0, ("sgd", "vpt-shallow"): 1.0, ("sgd", "vpt-deep"): 1.0, ("sgd", "e2vpt"): 1.0,
              ("sgd", "full"): 0.05, ("adamw", "linear"): 0.16, ("adamw", "vpt-shallow"): 0.16,
              ("adamw", "vpt-deep"): 0.16, ("adamw", "e2vpt"): 0.16, ("adamw", "full"): 1e-3}
DEFAULT_WD = {"sgd": 1e-4, "adamw": 0.01}
# the hp-search grid around the centre: 3 learning rates x 2 weight decays. AdamW's decay is decoupled
# (lr * wd per step), so 0.01 is nearly no decay on a short schedule: its grid goes up a decade instead of to 0.
LR_FACTORS = (0.25, 1.0, 4.0)
WD_GRID = {"sgd": lambda wd: [0.0, wd], "adamw": lambda wd: [wd, 10 * wd]}


class TrainConfigError(ValueError):
    """A setting that cannot work; the message names the flag and what to use instead."""


@dataclass
class TrainConfig:
    method: str = "e2vpt"
    # prompts (ignored by linear / full); vpt-* use visual only, e2vpt visual + key-value
    visual_tokens: int = 10
    kv_tokens: int = 10
    shared_kv: bool = True
    visual_init: str = "vpt_uniform"
    kv_init: str = "he_uniform"
    # dropout on the visual prompts while training (official code: 0.1). 0: 0.1 gave no gain on dtd10
    # (vpt-deep, 3 seeds: 29.2 +- 1.7 vs 29.8 +- 1.4 test; docs/results.md)
    prompt_dropout: float = 0.0
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | None = None  # base lr at batch 256; None: the method's default (DEFAULT_LR)
    weight_decay: float | None = None  # None: the optimizer's default (DEFAULT_WD)
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0  # None: no clipping
    augment: bool = False  # random crop + flip of the training images
    flip: bool = True  # with augment: the flip too; False for signs, digits, text (a mirror image is another class)
    # method full only: a regex searched in the backbone's weight names (timm's: blocks.0.attn.qkv.weight);
    # only matching weights train, the new head always does (VPT's Partial-k baselines). None: every weight
    trainable: str | None = None
    amp: bool = True  # bf16 autocast where native (CUDA; a CPU with AMX/AVX512-BF16): promptserve.hardware
    # data: a class-balanced seeded subset (VTAB-1k: 1000), a validation split held out of it
    train_size: int | None = 1000  # None: every training image
    val_fraction: float = 0.2  # of the training images, when the data has no val/ split
    val_max: int = 200  # ... but at most this many (VTAB-1k: 800/200)
    val_group: str | None = None  # a regex on `<class>/<file>`: images it matches alike stay on one side of the split
    final_on_all: bool = True  # one seed: after tuning, train the final artifact on train + val
    seed: int = 0
    seeds: int = 1  # train the final config with seeds seed..seed+N-1; save the best on validation
    # hyper-parameter search (VTAB protocol): lr x wd grid, each point trained on train and scored on val
    hp_search: bool | None = None  # None: on for prompt methods, off for linear / full
    lr_grid: list[float] = field(default_factory=list)  # empty: LR_FACTORS x the lr
    wd_grid: list[float] = field(default_factory=list)  # empty: WD_GRID[optimizer](weight_decay)
    hp_epochs: int | None = None  # the search's short schedule; None: half of epochs (at least 1)
    # E2VPT pruning (visual prompts only)
    token_prune: float = 0.5  # fraction of visual tokens removed per layer
    segment_prune: float = 0.25  # fraction of the kept tokens' segments zeroed per layer
    segments: int = 8  # R segments per token (paper 8; the official code 16 interleaved)
    segment_layout: str = "contiguous"  # or "interleaved": dim j belongs to segment j % R
    segment_rule: str = "global"  # global: lowest segments of the layer; per-token: the same count per token
    min_segments_kept: int = 1  # per-token rule: every kept token keeps at least this many segments
    importance: str = "abs"  # abs: E|dL/drho| over stage-1 batches; signed: E[dL/drho], one pass after stage 1
    search: bool = False  # choose (token_prune, segment_prune) from the grids below on the val split
    token_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    segment_grid: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    search_tolerance: float = 0.01  # keep the most pruning within this val accuracy of the best
    # runtime (not saved: they do not change the result)
    eval_batch_size: int = 256
    threads: int | None = None  # None: torch's default
    device: str = "cpu"
    progress: bool = True
    cache: bool = True  # the decode cache (see training/imagefolder.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise TrainConfigError(f"method={self.method!r}: choose one of {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"optimizer={self.optimizer!r}: choose one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainConfigError("epochs and batch_size must be >= 1")
        if self.visual_tokens < 0 or self.kv_tokens < 0:
            raise TrainConfigError("visual_tokens and kv_tokens must be >= 0")
        if self.lr is None:
            self.lr = DEFAULT_LR[(self.optimizer, self.method)]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WD[self.optimizer]
        if not 0 < self.lr < 100:
            raise TrainConfigError(f"lr={self.lr}: expected a base learning rate in (0, 100)")
        if self.weight_decay < 0:
            raise TrainConfigError(f"weight_decay={self.weight_decay}: use >= 0 (or leave it out for the default)")
        for name in ("token_prune", "segment_prune", "search_tolerance", "prompt_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainConfigError(f"{name}={getattr(self, name)}: a fraction in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainConfigError(f"val_fraction={self.val_fraction}: a fraction in [0, 1) (0: no validation split)")
        if self.val_max < 0:
            raise TrainConfigError("val_max must be >= 0")
        if not self.flip and not self.augment:
            raise TrainConfigError("flip=False (--no-flip) only changes --augment's random crop + flip: add "
                                   "--augment for the crop alone, or leave --no-flip out")
        if self.val_group:
            try:
                re.compile(self.val_group)
            except re.error as e:
                raise TrainConfigError(f"val_group '{self.val_group}' is not a regular expression: {e}") from None
        if self.trainable is not None:
            if not self.trainable:
                raise TrainConfigError("trainable '' would find every weight: leave --trainable out for full "
                                       "fine-tuning of them all")
            if self.method != "full":
                raise TrainConfigError(f"trainable '{self.trainable}' chooses backbone weights to fine-tune: it "
                                       "goes with --method full (prompt methods never train the backbone)")
            try:
                re.compile(self.trainable)
            except re.error as e:
                raise TrainConfigError(f"trainable '{self.trainable}' is not a regular expression: {e}") from None
        if self.train_size is not None and self.train_size < 1:
            raise TrainConfigError(f"train_size {self.train_size}: use a positive image count, or None (--train-size "
                                   "all) for every training image")
        if any(not 0.0 <= f <= 1.0 for f in [*self.token_grid, *self.segment_grid]):
            raise TrainConfigError("pruning grids hold fractions in [0, 1]")
        if self.segments < 1:
            raise TrainConfigError(f"segments={self.segments}: use >= 1 (paper: 8, official code: 16)")
        if self.segment_layout not in ("contiguous", "interleaved"):
            raise TrainConfigError(f"segment_layout={self.segment_layout!r}: 'contiguous' or 'interleaved'")
        if self.segment_rule not in SEGMENT_RULES:
            raise TrainConfigError(f"segment_rule={self.segment_rule!r}: choose one of {SEGMENT_RULES}")
        if not 1 <= self.min_segments_kept <= self.segments:
            raise TrainConfigError(f"min_segments_kept={self.min_segments_kept}: between 1 and segments "
                                   f"({self.segments})")
        if self.importance not in IMPORTANCE:
            raise TrainConfigError(f"importance={self.importance!r}: choose one of {IMPORTANCE}")
        if self.device != "cpu":
            raise TrainConfigError(f"--device {self.device}: the trainer runs on the CPU (GPU training is not "
                                   "supported yet): use --device cpu")
        if self.threads is not None and self.threads < 1:
            raise TrainConfigError(f"threads={self.threads}: use >= 1, or leave it out for torch's default")
        if self.seeds < 1:
            raise TrainConfigError(f"seeds={self.seeds}: train at least one seed")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise TrainConfigError(f"grad_clip={self.grad_clip}: a positive norm, or None for no clipping")
        if self.hp_search is None:
            self.hp_search = self.method not in ("linear", "full")  # the prompt methods
        if self.hp_epochs is None:
            self.hp_epochs = max(1, self.epochs // 2)
        if self.hp_epochs < 1:
            raise TrainConfigError(f"hp_epochs={self.hp_epochs}: use >= 1")
        if self.hp_search and not self.lr_grid:
            self.lr_grid = [round(self.lr * f, 6) for f in LR_FACTORS]
        if self.hp_search and not self.wd_grid:
            self.wd_grid = WD_GRID[self.optimizer](self.weight_decay)

    @property
    def tunes(self) -> bool:
        """Does anything get chosen on the validation split?"""
        return bool(self.hp_search or (self.search and self.prunes))

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256

    def prompt_lengths(self) -> tuple[int, int, bool]:
        """(visual tokens, key-value tokens, deep) for this method."""
        return {"linear": (0, 0, True), "full": (0, 0, True), "vpt-shallow": (self.visual_tokens, 0, False),
                "vpt-deep": (self.visual_tokens, 0, True),
                "e2vpt": (self.visual_tokens, self.kv_tokens, True)}[self.method]

    @property
    def prunes(self) -> bool:
        return self.method == "e2vpt" and self.visual_tokens > 0 and (
            self.search or self.token_prune > 0 or self.segment_prune > 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        for runtime in ("progress", "cache"):
            d.pop(runtime)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
