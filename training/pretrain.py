"""Pretrain the small demo backbone: a timm ViT trained from scratch on an ImageFolder set (CIFAR-10).

The demo backbone exists so that promptserve has a real frozen model to prompt on a machine with no
model hub. The recipe is the usual small-data ViT one: AdamW, cosine with warm-up, label smoothing,
random crop (4px padding) + horizontal flip, stochastic depth. Images are decoded once into a uint8
array and augmented as tensors, so an epoch costs only the forward and backward passes.
A checkpoint after every epoch lets an interrupted run resume where it stopped. The settings, model, data,
optimizer, evaluation, checkpoint and export are distillation's too (training/backbone_training.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from promptserve.preprocess import normalise
from training import backbone_training
from training.data import augment
from training.loop import lr_at, train_epoch
from training.progress import EpochClock

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging

# images per scoring forward (distillation's: 256): the batch size can move float rounding, and with it a
# borderline prediction, so it stays what the recorded pretraining runs used and a rerun logs their numbers
EVAL_BATCH = 512


@dataclass(kw_only=True)
class PretrainConfig(backbone_training.Config):
    """Training from scratch: the usual small-data ViT recipe, label smoothing included."""

    epochs: int = 30
    lr: float = 1e-3
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1


def pretrain(cfg: PretrainConfig, log=logger.info) -> dict:
    backbone_training.start(cfg)
    out = Path(cfg.out)
    model, data_cfg, train, test = backbone_training.vit_and_data(cfg, cfg.model, cfg.model_kwargs)
    if model.num_classes != len(train.classes):
        model.reset_classifier(len(train.classes))

    params = list(model.parameters())  # what gradient clipping sees, in the model's order
    opt = backbone_training.optimizer(model, cfg)
    steps_per_epoch = len(train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    checkpoint = backbone_training.Checkpoint(cfg, "model", model, opt)
    history, start_epoch = checkpoint.resume()
    if start_epoch:
        log(f"resumed from {cfg.checkpoint} at epoch {start_epoch}")

    gen, clock = torch.Generator().manual_seed(cfg.seed), EpochClock(start_epoch, cfg.epochs, log, "pretrain")
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
        last = epoch + 1 == cfg.epochs
        test_acc, test_images = backbone_training.score_on_test(model, data_cfg, test, last, EVAL_BATCH)
        history.append({"epoch": epoch + 1, **stats, "test_acc": test_acc, "test_images": test_images,
                        "seconds": time.time() - t0, "threads": torch.get_num_threads()})
        log(json.dumps(history[-1]))
        checkpoint.save(history, epoch + 1)
        backbone_training.export_backbone(model, cfg.model, {**cfg.model_kwargs, "num_classes": len(train.classes)},
                                          train.classes, test_acc, epoch + 1, out,
                                          {"pretrain_config": json.dumps(asdict(cfg))})
        clock.epoch_done(epoch + 1)
    return {"history": history, "out": str(out)}
