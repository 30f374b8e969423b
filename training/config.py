"""TrainConfig: everything one `promptserve train` run depends on, validated at construction.

Saved (as JSON) inside every artifact's `config` metadata and beside it in report.json, so a result can be
reproduced from the artifact alone. Learning rates are BASE rates for batch 256: the optimizer gets
lr * batch_size / 256 (the paper's scaling rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = ("linear", "vpt-shallow", "vpt-deep", "e2vpt", "full")
OPTIMIZERS = ("sgd", "adamw")

# per-method base lrs (batch 256). Checked on the demo backbone (sign digits, 4-epoch runs): SGD at 8 made
# prompts diverge, AdamW at 0.16 trained stably and beat lower rates on val, for prompts and the head alike.
# AdamW is the default because short CPU schedules leave no room for the paper's lr grid and AdamW is far
# less sensitive to the lr scale. Full fine-tuning moves every weight, so it takes a much smaller step.
DEFAULT_LR = {("sgd", "linear"): 8.0, ("sgd", "vpt-shallow"): 1.0, ("sgd", "vpt-deep"): 1.0, ("sgd", "e2vpt"): 1.0,
              ("sgd", "full"): 0.05, ("adamw", "linear"): 0.16, ("adamw", "vpt-shallow"): 0.16,
              ("adamw", "vpt-deep"): 0.16, ("adamw", "e2vpt"): 0.16, ("adamw", "full"): 1e-3}
DEFAULT_WD = {"sgd": 1e-4, "adamw": 0.01}


class TrainConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    method: str = "e2vpt"
    # prompts (ignored by linear / full); vpt-* use visual only, e2vpt visual + key-value
    visual_tokens: int = 10
    kv_tokens: int = 10
    shared_kv: bool = True
    visual_init: str = "vpt_uniform"
    kv_init: str = "he_uniform"
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 0.0  # base lr at batch 256; 0 = the method's default (DEFAULT_LR)
    weight_decay: float = -1.0  # -1 = the optimizer's default (DEFAULT_WD)
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    augment: bool = False
    amp: bool = True  # used on CUDA only
    # data (VTAB-1k protocol: 1000 images, 800/200 for tuning, then train on all 1000)
    train_size: int = 1000  # 0 = every training image
    val_size: int = 200
    final_on_all: bool = True  # after tuning, train the final artifact on train + val
    seed: int = 0
    # E2VPT pruning (visual prompts only)
    token_prune: float = 0.5  # fraction of visual tokens removed per layer
    segment_prune: float = 0.25  # fraction of the kept tokens' segments zeroed per layer
    segments: int = 8  # R segments per token (paper 8; the official code 16 interleaved)
    segment_layout: str = "contiguous"  # or "interleaved": dim j belongs to segment j % R
    importance: str = "abs"  # S = E|dL/drho| ; "signed": S = -E[dL/drho] (official code)
    search: bool = False  # choose (token_prune, segment_prune) from the grids below on the val split
    token_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    segment_grid: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    search_tolerance: float = 0.01  # keep the most pruning within this val accuracy of the best
    # optional lr x wd grid on the val split (the paper's protocol; expensive)
    hp_search: bool = False
    lr_grid: list[float] = field(default_factory=list)
    wd_grid: list[float] = field(default_factory=list)
    # runtime
    eval_batch_size: int = 256
    threads: int = 0  # 0 = torch's default
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise TrainConfigError(f"method={self.method!r}: choose one of {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"optimizer={self.optimizer!r}: choose one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainConfigError("epochs and batch_size must be >= 1")
        if self.visual_tokens < 0 or self.kv_tokens < 0:
            raise TrainConfigError("visual_tokens and kv_tokens must be >= 0")
        if self.lr == 0.0:
            self.lr = DEFAULT_LR[(self.optimizer, self.method)]
        if self.weight_decay < 0:
            self.weight_decay = DEFAULT_WD[self.optimizer]
        if not 0 < self.lr < 100:
            raise TrainConfigError(f"lr={self.lr}: expected a base learning rate in (0, 100)")
        for name in ("token_prune", "segment_prune", "search_tolerance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainConfigError(f"{name}={getattr(self, name)}: a fraction in [0, 1]")
        if any(not 0.0 <= f <= 1.0 for f in [*self.token_grid, *self.segment_grid]):
            raise TrainConfigError("pruning grids hold fractions in [0, 1]")
        if self.segments < 1:
            raise TrainConfigError(f"segments={self.segments}: use >= 1 (paper: 8, official code: 16)")
        if self.segment_layout not in ("contiguous", "interleaved"):
            raise TrainConfigError(f"segment_layout={self.segment_layout!r}: 'contiguous' or 'interleaved'")
        if self.importance not in ("abs", "signed"):
            raise TrainConfigError(f"importance={self.importance!r}: 'abs' or 'signed'")
        if self.hp_search and not (self.lr_grid or self.wd_grid):
            self.lr_grid = [self.lr * f for f in (0.25, 1.0, 4.0)]
            self.wd_grid = [0.0, self.weight_decay]
        if (self.search or self.hp_search) and self.val_size <= 0:
            raise TrainConfigError("--search / --hp-search choose on a validation split: set val_size > 0")

    @property
    def uses_prompts(self) -> bool:
        return self.method in ("vpt-shallow", "vpt-deep", "e2vpt")

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
        d.pop("progress")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
