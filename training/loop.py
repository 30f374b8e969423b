"""The training loop shared by every method and stage, and the evaluation every artifact goes through.

Cosine schedule with linear warm-up, SGD (momentum 0.9) or AdamW at lr * batch / 256, bf16 autocast where the
hardware runs it natively (promptserve.hardware: CUDA sm80+, a CPU with AMX/AVX512-BF16), seeded batch order
(CPU runs are bit-for-bit repeatable with the same thread count and precision).
Ctrl-C propagates as KeyboardInterrupt: nothing is written until a run has finished. Progress bars draw
only on a terminal (training/progress.py); the per-epoch log lines are the progress in a log file.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptserve.backbone import Backbone
from promptserve.backends import open_backend
from promptserve.hardware import bf16_is_native
from promptserve.model import PromptedViT
from promptserve.preprocess import normalise
from promptserve.promptset import PromptSet
from training.config import TrainConfig
from training.data import augment
from training.progress import StepClock, bar

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def make_optimizer(params: list[nn.Parameter], optimizer: str, lr: float, weight_decay: float, *,
                   no_decay: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or AdamW over `params`, the project's one weight-decay rule: decay on matrices and
    prompt tensors, none on biases and norm scales (the usual split) nor on the `no_decay` parameters.
    Two groups (decayed, then the rest; an empty one left out), each in the order of `params`."""
    exempt = {id(p) for p in no_decay}
    decay = [p for p in params if p.ndim > 1 and id(p) not in exempt]
    rest = [p for p in params if p.ndim <= 1 or id(p) in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=lr)


def train_epoch(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
                params: list[nn.Parameter], batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int,
                lr: Callable[[int], float], first_step: int, *, grad_clip: float | None, label_smoothing: float,
                device: torch.device, amp: bool = False, after_backward: Callable[[], None] | None = None,
                clock: StepClock | None = None, desc: str = "train", progress: bool = True,
                criterion: Criterion | None = None) -> dict:
    """One epoch of optimizer steps: the step every training run in the project takes (`fit`, pretraining,
    distillation).

    batch(i) -> (x, y) for step i of the epoch (the caller owns data order and augmentation; y may be a tuple
    of tensors); lr(step) -> the learning rate of global step `first_step + i`. criterion(output, y) ->
    (loss, correct count, named loss parts); default: label-smoothed cross-entropy on logits. The correct count
    may be a pair (right, counted) when only `counted` examples of the batch have a label (distillation's
    unlabeled views); train_acc is right / counted over the epoch. amp: bf16 autocast on `device`. Returns
    {"train_loss", "train_acc", and each part's epoch mean}."""
    criterion = criterion or (lambda out, y: cross_entropy(out, y, label_smoothing))
    seen, loss_sum, correct, counted = 0, 0.0, 0, 0
    part_sums: dict[str, float] = {}
    steps_bar = bar(range(steps), desc=desc, enabled=progress)
    for i in steps_bar:
        for group in opt.param_groups:
            group["lr"] = lr(first_step + i)
        x, y = batch(i)
        x, y = x.to(device), _to(y, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward(x)  # logits (B, C), or whatever the criterion takes
        loss, n_correct, parts = criterion(out, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[{desc}] loss is {loss.item()} at step {i}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if clock is not None:
            clock.step()
        seen += len(x)
        loss_sum += loss.item() * len(x)
        right, out_of = n_correct if isinstance(n_correct, tuple) else (n_correct, len(x))
        correct, counted = correct + right, counted + out_of
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + value * len(x)
        steps_bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / max(counted, 1):.3f}", refresh=False)
    steps_bar.close()
    return {"train_loss": loss_sum / seen, "train_acc": correct / max(counted, 1),
            **{name: total / seen for name, total in part_sums.items()}}


Criterion = Callable[..., tuple[torch.Tensor, int | tuple[int, int], dict[str, float]]]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, int, dict[str, float]]:
    """The default criterion: logits (B, C), labels (B,) -> (loss, correct count, no parts)."""
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    return loss, int((logits.argmax(1) == y).sum().item()), {}


def _to(y, device: torch.device):
    return tuple(t.to(device) for t in y) if isinstance(y, tuple | list) else y.to(device)


def fit(forward: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter], inputs, labels: np.ndarray,
        cfg: TrainConfig, *, prepare: Callable | None = None, after_backward: Callable[[], None] | None = None,
        desc: str = "train", salt: int = 0, log=logger.info, clock: StepClock | None = None) -> list[dict]:
    """Train `params` (the optimizer sees nothing else) for cfg.epochs; returns per-epoch history.

    inputs: (N, S, S, 3) uint8 images (normalised per batch by `prepare`, default: the server's
    normalise + optional augmentation) or any (N, ...) tensor with a custom `prepare`.
    forward(x) -> logits (B, C). after_backward(): called between backward and the optimizer step
    (E2VPT reads the mask gradients there). clock: counts steps for the run's time estimate.
    `forward.train(True)` (prompt dropout) is set for the loop only."""
    device = torch.device(cfg.device)
    n = len(labels)
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    total, warmup = steps * cfg.epochs, round(cfg.warmup_epochs * steps)
    opt = make_optimizer(params, cfg.optimizer, cfg.effective_lr, cfg.weight_decay)
    amp = cfg.amp and bf16_is_native(device)  # the hardware does not change between epochs
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + salt)
    y_all = torch.as_tensor(labels)
    n_params = sum(p.numel() for p in params)
    log(f"[{desc}] {n} images, {cfg.epochs} epochs x {steps} steps, batch {bs}, {cfg.optimizer} "
        f"lr {cfg.effective_lr:.4g} (base {cfg.lr:g} x {bs}/256), wd {cfg.weight_decay:g}, "
        f"trainable {n_params:,} params")
    set_mode = getattr(forward, "train", None)  # prompt dropout is on only while this loop runs
    if set_mode is not None:
        set_mode(True)
    try:
        history = []
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)

            def batch(s: int, order=order) -> tuple[torch.Tensor, torch.Tensor]:
                idx = order[s * bs:(s + 1) * bs]
                if prepare is not None:
                    return prepare(inputs, idx), y_all[idx]
                x = normalise(inputs[idx.numpy()], _data_cfg(forward))
                return (augment(x, gen, cfg.flip) if cfg.augment else x), y_all[idx]

            t0 = time.time()
            stats = train_epoch(forward, opt, params, batch, steps, lambda step: lr_at(step, total, warmup,
                                cfg.effective_lr), epoch * steps, grad_clip=cfg.grad_clip,
                                label_smoothing=cfg.label_smoothing, device=device,
                                amp=amp, after_backward=after_backward, clock=clock,
                                desc=f"{desc} {epoch + 1}/{cfg.epochs}", progress=cfg.progress)
            seconds = time.time() - t0
            history.append({"stage": desc, "epoch": epoch + 1, **stats, "lr_end": opt.param_groups[0]["lr"],
                            "seconds": round(seconds, 2)})
            log(f"[{desc}] epoch {epoch + 1}/{cfg.epochs} loss {stats['train_loss']:.4f} "
                f"acc {stats['train_acc']:.4f} ({seconds:.1f}s)")
    finally:
        if set_mode is not None:
            set_mode(False)
    return history


def _data_cfg(forward):
    cfg = getattr(forward, "data_config", None)
    if cfg is None:
        raise ValueError("fit() without `prepare` needs forward.data_config (the backbone's DataConfig)")
    return cfg


class PromptForward:
    """forward(x) = PromptedViT.forward_batch(x, params.prompt_batch(B)): the served computation."""

    def __init__(self, backbone: Backbone, params):
        self.model = PromptedViT(backbone)
        self.params = params
        self.data_config = backbone.data_config

    def train(self, mode: bool) -> None:
        self.params.train(mode)  # prompt dropout; the frozen backbone has none to switch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_batch(x, self.params.prompt_batch(x.shape[0]))


class ModuleForward:
    """forward(x) = model(x) for `full` fine-tuning."""

    def __init__(self, model: nn.Module, data_config):
        self.model, self.data_config = model, data_config

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---- evaluation ---------------------------------------------------------------------------------------
def predict_prompt_set(backbone: Backbone, ps: PromptSet, images: np.ndarray, batch_size: int = 256,
                       device: str = "cpu", progress: bool = False, dtype: torch.dtype | None = None,
                       backend: str = "torch") -> np.ndarray:
    """Predicted class per image exactly as the server computes it: validate + add_task into a
    PromptedViT, normalise with the backbone's statistics, `model(images, task_names)`. dtype, backend: run in
    that precision on that backend, as a server with them does (a half precision on a copy of the weights)."""
    model = open_backend(backend, backbone, dtype=dtype or torch.float32)
    model.model.add_task("eval", ps)
    preds = []
    for i in bar(range(0, len(images), batch_size), desc="evaluate", enabled=progress):
        x = normalise(images[i:i + batch_size], backbone.data_config).to(device)
        preds.append(model(x, ["eval"] * len(x)).argmax(1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def accuracy_prompt_set(backbone: Backbone, ps: PromptSet, images: np.ndarray, labels: np.ndarray,
                        batch_size: int = 256, progress: bool = False) -> float:
    return float((predict_prompt_set(backbone, ps, images, batch_size, progress=progress) == labels).mean())


@torch.no_grad()
def accuracy_module(model: nn.Module, data_config, images: np.ndarray, labels: np.ndarray,
                    batch_size: int = 256, progress: bool = False) -> float:
    model.eval()
    p = next(model.parameters())
    correct = 0
    for i in bar(range(0, len(images), batch_size), desc="evaluate", enabled=progress):
        x = normalise(images[i:i + batch_size], data_config).to(p.device, p.dtype)
        correct += (model(x).argmax(1).cpu().numpy() == labels[i:i + batch_size]).sum()
    return float(correct / len(labels))


@torch.no_grad()
def features(backbone: Backbone, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, D) pooled, final-norm features from the served forward with no prompts (an identity head
    returns the features bit-exactly): linear probing trains on these once instead of every epoch."""
    D = backbone.embed_dim
    from promptserve.bank import PromptBatch

    model = PromptedViT(backbone)
    eye, zero = torch.eye(D), torch.zeros(D)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalise(images[i:i + batch_size], backbone.data_config)
        batch = PromptBatch.for_one_task(len(x), backbone.num_layers, {}, {}, None, eye, zero, pooling=backbone.pooling)
        out.append(model.forward_batch(x, batch))
    return torch.cat(out)
