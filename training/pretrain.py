"""Pretrain the small demo backbone: a timm ViT trained from scratch on an ImageFolder set (CIFAR-10).

The demo backbone exists so that promptserve has a real frozen model to prompt on a machine with no
model hub. The recipe is the usual small-data ViT one: AdamW, cosine with warm-up, label smoothing,
random crop (4px padding) + horizontal flip, stochastic depth. Images are decoded once into a uint8
array and augmented as tensors, so an epoch costs only the forward and backward passes.
A checkpoint after every epoch lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from promptserve.backbone import DataConfig
from promptserve.files import atomic_target
from promptserve.preprocess import normalise
from training.data import augment
from training.imagefolder import load_split
from training.loop import lr_at, train_epoch

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


@dataclass
class PretrainConfig:
    data: str
    out: str
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: {"img_size": 32, "patch_size": 4, "depth": 6})
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    seed: int = 0
    threads: int = 0  # 0: torch's default; the only field a resumed run may change
    limit_train: int = 0  # 0: all (a small number makes a smoke run)
    resume: bool = False  # continue from <out>.ckpt.pt; its recipe must match this one

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr={self.lr} is outside (0, 1)")


@torch.no_grad()
def evaluate(model, images, labels, data_cfg: DataConfig, batch_size=512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = normalise(images[i:i + batch_size], data_cfg)
        correct += (model(x).argmax(1) == torch.from_numpy(labels[i:i + batch_size])).sum().item()
    return correct / len(labels)


def pretrain(cfg: PretrainConfig, log=logger.info) -> dict:
    import timm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_suffix(".ckpt.pt")

    model = timm.create_model(cfg.model, pretrained=False, drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
    size = model.patch_embed.img_size[0]
    dcfg = timm.data.resolve_model_data_config(model)
    data_cfg = DataConfig(size, tuple(dcfg["mean"]), tuple(dcfg["std"]), dcfg.get("interpolation", "bicubic"))

    train = load_split(cfg.data, "train", size, data_cfg.interpolation)
    test = load_split(cfg.data, "test", size, data_cfg.interpolation, classes=train.classes)
    if cfg.limit_train:
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.limit_train]
        train.images, train.labels = train.images[keep.numpy()], train.labels[keep.numpy()]
    if model.num_classes != len(train.classes):
        model.reset_classifier(len(train.classes))

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    params = list(model.parameters())  # what gradient clipping sees, in the model's order
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    history, start_epoch = [], 0
    if ckpt_path.exists() and not cfg.resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or delete it to start over")
    if cfg.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        check_same_recipe(state.get("config", {}), asdict(cfg), free={"threads", "resume"})
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        history, start_epoch = state["history"], state["epoch"]
        log(f"resumed from {ckpt_path} at epoch {start_epoch}")

    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)  # resume-safe: each epoch's order depends on its index only
        model.train()
        order = torch.randperm(len(train), generator=gen)

        def batch(i: int, order=order) -> tuple[torch.Tensor, torch.Tensor]:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].numpy()
            return augment(normalise(train.images[idx], data_cfg), gen), torch.from_numpy(train.labels[idx])

        t0 = time.time()
        stats = train_epoch(model, opt, params, batch, steps_per_epoch,
                            lambda step: lr_at(step, total, warmup, cfg.lr), epoch * steps_per_epoch,
                            grad_clip=1.0, label_smoothing=cfg.label_smoothing, device=torch.device("cpu"),
                            desc=f"epoch {epoch + 1}/{cfg.epochs}")
        # a seeded 2,000-image sample per epoch keeps evaluation cheap; the last epoch uses the whole split
        last = epoch + 1 == cfg.epochs
        sample = slice(None) if last else torch.randperm(
            len(test), generator=torch.Generator().manual_seed(0))[:2000].numpy()
        test_acc = evaluate(model, test.images[sample], test.labels[sample], data_cfg)
        history.append({"epoch": epoch + 1, **stats, "test_acc": test_acc, "test_images": len(test.labels[sample]),
                        "seconds": time.time() - t0, "threads": torch.get_num_threads()})
        log(json.dumps(history[-1]))
        with atomic_target(ckpt_path) as tmp:  # a kill mid-save must not destroy the previous checkpoint
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "history": history,
                        "epoch": epoch + 1, "config": asdict(cfg)}, tmp)
        export_backbone(model, cfg.model, {**cfg.model_kwargs, "num_classes": len(train.classes)}, train.classes,
                        test_acc, epoch + 1, out, {"pretrain_config": json.dumps(asdict(cfg))})
    return {"history": history, "out": str(out)}


def check_same_recipe(saved: dict, now: dict, free: set[str]) -> None:
    """A resumed run continues the same schedule on the same data: only the `free` settings may change."""
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
