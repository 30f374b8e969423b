"""What training a whole backbone shares: `promptserve pretrain` (pretrain.py) and `promptserve distill`
(distill.py) train every weight of a timm ViT on an ImageFolder set with train/ and test/ (CIFAR-10).

Both take the same settings (`Config`) and build the model and its data the same way; they use the project's
one optimizer (`training.loop.make_optimizer`, with the position embedding exempt from weight decay, as ViT
recipes from scratch do) and its one evaluation (`training.loop.accuracy_module`); after every epoch they write
<out>.ckpt.pt (atomic; `--resume` continues it when the recipe matches) and a backbone file that
`Backbone.from_file` rebuilds.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from promptserve.backbone import DataConfig
from promptserve.files import atomic_target
from training.imagefolder import ImageArray, load_split
from training.loop import accuracy_module, make_optimizer

TEST_SAMPLE = 2000  # test images scored after every epoch but the last (which scores the whole split)


@dataclass(kw_only=True)
class Config:
    """The model, data and optimiser settings of a backbone run (`epochs`, `lr`, `warmup_epochs`: each run's
    own defaults). The whole config is saved in the checkpoint; a resumed run must match it on every field
    but `FREE_ON_RESUME`."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"threads", "resume"})

    data: str  # ImageFolder dir or .tar with train/ and test/
    out: str  # the backbone file; the checkpoint is <out>.ckpt.pt
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: {"img_size": 32, "patch_size": 4, "depth": 6})
    epochs: int
    batch_size: int = 128
    lr: float  # AdamW peak learning rate (cosine after the warm-up)
    weight_decay: float = 0.05
    warmup_epochs: float
    drop_path: float = 0.1
    seed: int = 0
    threads: int = 0  # 0: torch's default; may change on --resume
    limit_train: int = 0  # 0: all (a small number makes a smoke run)
    resume: bool = False  # continue from <out>.ckpt.pt; its recipe must match this one

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What cannot work, each naming its flag; a subclass adds its own."""
        problems = []
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("--epochs and --batch-size must be >= 1")
        if not 0 < self.lr < 1:
            problems.append(f"--lr {self.lr} is outside (0, 1)")
        return problems

    @property
    def checkpoint(self) -> Path:
        return Path(self.out).with_suffix(".ckpt.pt")


def start(cfg: Config) -> None:
    """Threads, the seed and the output folder; an existing checkpoint is never restarted or continued
    silently."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint.exists() and not cfg.resume:
        raise FileExistsError(f"{cfg.checkpoint} exists: pass --resume to continue that run, or delete it to "
                              "start over")


def vit_and_data(cfg: Config, name: str, kwargs: dict
                 ) -> tuple[nn.Module, DataConfig, ImageArray, ImageArray]:
    """A timm ViT with timm's random init, the DataConfig its backbone file will have, and the train and test
    splits at its input size (`limit_train`: a seeded subset of train, in file order)."""
    import timm

    model = timm.create_model(name, pretrained=False, drop_path_rate=cfg.drop_path, **kwargs)
    size = model.patch_embed.img_size[0]  # timm's data config keeps 224 when img_size is overridden
    dcfg = timm.data.resolve_model_data_config(model)
    data_cfg = DataConfig(size, tuple(dcfg["mean"]), tuple(dcfg["std"]), dcfg.get("interpolation", "bicubic"))
    train = load_split(cfg.data, "train", size, data_cfg.interpolation)
    test = load_split(cfg.data, "test", size, data_cfg.interpolation, classes=train.classes)
    if cfg.limit_train:
        keep_seeded_subset(train, cfg.limit_train, cfg.seed)
    return model, data_cfg, train, test


def keep_seeded_subset(split: ImageArray, n: int, seed: int) -> None:
    """Keep a seeded subset of n images, in file order (`--limit-train`: a smoke run)."""
    keep = np.sort(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].numpy())
    kept = split.take(keep)
    split.images, split.labels, split.names = kept.images, kept.labels, kept.names


def optimizer(module: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over every parameter of `module`, the position embedding free of weight decay. A checkpoint's
    optimizer state fits only these groups in this order: keep them as they are."""
    no_decay = [p for name, p in module.named_parameters() if "pos_embed" in name]
    return make_optimizer(list(module.parameters()), "adamw", cfg.lr, cfg.weight_decay, no_decay=no_decay)


def score_on_test(model: nn.Module, data_cfg: DataConfig, test: ImageArray, last: bool,
                  batch_size: int = 256) -> tuple[float, int]:
    """(accuracy, images scored): a fixed seeded sample of the test split keeps an epoch's evaluation cheap;
    after the last epoch, the whole split."""
    picked = slice(None) if last else torch.randperm(
        len(test), generator=torch.Generator().manual_seed(0))[:TEST_SAMPLE].numpy()
    labels = test.labels[picked]
    return accuracy_module(model, data_cfg, test.images[picked], labels, batch_size), len(labels)


class Checkpoint:
    """<out>.ckpt.pt: the module's weights under `key` ("model" for pretraining, "student" for distillation),
    the optimizer, the history, the epochs done and the whole config. `--resume` must read the checkpoints that
    runs in progress wrote with earlier code, so this layout stays as it is."""

    def __init__(self, cfg: Config, key: str, module: nn.Module, opt: torch.optim.Optimizer):
        self.cfg, self.key, self.module, self.opt = cfg, key, module, opt

    def resume(self) -> tuple[list[dict], int]:
        """(history, epochs done) with --resume and a checkpoint, else ([], 0); refuses another recipe's."""
        path = self.cfg.checkpoint
        if not (self.cfg.resume and path.exists()):
            return [], 0
        saved = torch.load(path, weights_only=False)
        check_same_recipe(saved.get("config", {}), asdict(self.cfg), free=self.cfg.FREE_ON_RESUME,
                          defaults={f.name: f.default for f in fields(self.cfg) if f.default is not MISSING})
        self.module.load_state_dict(saved[self.key])
        self.opt.load_state_dict(saved["opt"])
        return saved["history"], saved["epoch"]

    def save(self, history: list[dict], epoch: int) -> None:
        with atomic_target(self.cfg.checkpoint) as tmp:  # a kill mid-save must not destroy the previous one
            torch.save({self.key: self.module.state_dict(), "opt": self.opt.state_dict(), "history": history,
                        "epoch": epoch, "config": asdict(self.cfg)}, tmp)


def check_same_recipe(saved: dict, now: dict, free: frozenset[str], defaults: dict | None = None) -> None:
    """A resumed run continues the same schedule on the same data: only the `free` settings may change. A setting
    newer than the checkpoint counts as its default there (what the older code did), so turning it on is refused."""
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    diff = {k: (saved[k], v) for k, v in now.items() if k in saved and k not in free and saved[k] != v}
    if diff:
        raise ValueError("the checkpoint was made with another recipe; differences (checkpoint, now): "
                         + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items()))


def export_backbone(model, timm_name: str, timm_kwargs: dict, classes: list[str], test_acc: float, epochs: int,
                    out: Path, extra_meta: dict[str, str]) -> None:
    """Weights as fp16 safetensors with what `Backbone.from_file` needs to rebuild the model."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"timm_name": timm_name, "timm_kwargs": json.dumps(timm_kwargs), "labels": json.dumps(classes),
            "test_acc": f"{test_acc:.4f}", "epochs": str(epochs), **extra_meta}
    with atomic_target(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
