"""Distil a frozen ImageNet teacher into the demo ViT: `promptserve distill`.

The student is a timm ViT (by default the current demo backbone, so its CIFAR-10 knowledge is the start);
a linear projection of its pooled, final-norm feature (the feature every prompt set's head reads) regresses
the teacher's embedding of the same view, standardised per dimension (MSE: 1.0 = predicting the mean),
plus `ce_weight` x the CIFAR-10 cross-entropy on the view's (mixed) labels so the backbone's own head keeps
working. Views and teacher answers come from a fixed cache (training/teacher.py): epoch e trains on view
set e mod `views`, every image once. The teacher is needed once, to build the cache; the exported backbone
never needs it. `--unlabeled` adds images without labels (e.g. training/synthetic.py's dead leaves): their
views, cached apart, join every epoch with the distillation term only, so the teacher is asked about more
than the train split shows.

After every epoch: test accuracy on a fixed 2,000-image sample of the test split (the whole split after the
last), the frozen-feature linear probe on each `--probe` task (training/probe.py, the go/no-go curve), a
checkpoint (model, projection, optimizer, history, recipe; atomic) and the backbone file. `--resume`
continues from the checkpoint, on this or another machine.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptserve.hardware import bf16_is_native
from promptserve.preprocess import normalise
from training import backbone_training
from training.imagefolder import cache_dir, load_unlabeled
from training.loop import lr_at, train_epoch
from training.progress import EpochClock
from training.teacher import Teacher, ViewRecipe, check_view_cache, ensure_view_set, image_digest, load_views

logger = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "bf16", "off")
PROJECTORS = ("linear", "mlp")


@dataclass(kw_only=True)
class DistillConfig(backbone_training.Config):
    """`data`: images for the views, labels for the CE term; `model` and `model_kwargs` are used without `init`."""

    FREE_ON_RESUME: ClassVar[frozenset[str]] = backbone_training.Config.FREE_ON_RESUME | {"amp", "probe"}

    teacher: str  # a TFLite embedding model (../shared/teachers/mobilenet_v1_..._embedding_extractor.tflite)
    init: str | None = None  # a project backbone file to start from (None: timm's random init of `model`)
    depth: int | None = None  # with `init`: grow its blocks to this depth (new blocks start as identities)
    views: int = 8  # fixed view sets (teacher passes: views x (train + unlabeled) images, once)
    min_scale: float = 0.35
    mix: float = 0.5
    cache: str | None = None  # None: $PROMPTSERVE_CACHE/teacher/<teacher>-<recipe>
    epochs: int = 24
    lr: float = 5e-4
    warmup_epochs: float = 1.0
    ce_weight: float = 0.3
    projector: str = "linear"  # the head from the student's pooled feature to the teacher's: linear or mlp
    # a distill checkpoint (<out>.ckpt.pt) whose projector this stage starts from, instead of a new one
    init_projector: str | None = None
    unlabeled: str | None = None  # images in any folder layout, labels unused: their views join every epoch
    amp: str = "auto"  # bf16 autocast: auto = where the CPU has AMX / AVX512-BF16 (or on CUDA)
    probe: list[str] = field(default_factory=list)  # --data values of tasks to probe after every epoch
    probe_train_size: int = 1000

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.views < 1:
            problems.append("--views must be >= 1")
        if not 0 < self.min_scale <= 1:
            problems.append(f"--min-scale {self.min_scale} must be in (0, 1]")
        if not 0 <= self.mix <= 1:
            problems.append(f"--mix {self.mix} must be in [0, 1]")
        if self.ce_weight < 0:
            problems.append(f"--ce-weight {self.ce_weight} must be >= 0")
        if self.depth is not None and not self.init:
            problems.append("--depth grows an --init backbone; without --init set the depth in --model-kwargs")
        if self.init_projector and not self.init:
            problems.append("--init-projector continues a stage's projector: give --init the backbone that stage "
                            "exported")
        if self.init_projector and not Path(self.init_projector).is_file():
            problems.append(f"--init-projector {self.init_projector}: no such file (a distill run's <out>.ckpt.pt)")
        if self.projector not in PROJECTORS:
            problems.append(f"--projector {self.projector!r}: use one of {', '.join(PROJECTORS)}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"--amp {self.amp!r}: use one of {', '.join(AMP_CHOICES)}")
        return problems

    @property
    def recipe(self) -> ViewRecipe:
        return ViewRecipe(seed=self.seed, min_scale=self.min_scale, mix=self.mix)


class Student(nn.Module):
    """x (B, 3, S, S) -> (logits (B, C), projected feature (B, D_teacher)).

    `projector` "mlp" puts a hidden layer (D_teacher wide, GELU) between the pooled feature and the target: the
    feature-distillation literature finds a non-linear projector leaves the student's own feature better for
    downstream heads, since the projector, which is thrown away, absorbs part of the teacher-specific mapping."""

    def __init__(self, vit: nn.Module, teacher_dim: int, projector: str = "linear"):
        super().__init__()
        self.vit = vit
        if projector == "mlp":
            self.project = nn.Sequential(nn.Linear(vit.embed_dim, teacher_dim), nn.GELU(),
                                         nn.Linear(teacher_dim, teacher_dim))
        else:
            self.project = nn.Linear(vit.embed_dim, teacher_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)  # (B, D)
        return self.vit.head(pooled), self.project(pooled)


def distill_loss(out, target, ce_weight: float):
    """MSE to the standardised teacher embedding + ce_weight x cross-entropy on the view's mixed labels; a view
    of an unlabeled image (label -1) has the MSE term only, and its answer is neither right nor counted."""
    logits, proj = out  # (B, C), (B, D_t)
    emb, label_a, label_b, weight = target  # (B, D_t), (B,), (B,), (B,); labels -1: unlabeled
    mse = F.mse_loss(proj.float(), emb)
    labelled = label_a >= 0  # (B,) an unlabeled image is only mixed with another unlabeled one
    logp = F.log_softmax(logits.float(), dim=1)
    rows = torch.arange(len(logits))
    ce_rows = -(weight * logp[rows, label_a.clamp(min=0)] + (1 - weight) * logp[rows, label_b.clamp(min=0)])
    ce = ce_rows[labelled].mean() if labelled.any() else logits.sum() * 0.0
    dominant = torch.where(weight >= 0.5, label_a, label_b)
    correct = int(((logits.argmax(1) == dominant) & labelled).sum().item())
    return mse + ce_weight * ce, (correct, int(labelled.sum().item())), {"distill_mse": mse.item(), "ce": ce.item()}


def load_projector(student: Student, checkpoint: str | Path) -> None:
    """Start `student`'s projector from a distill checkpoint's, so a stage that continues another does not first
    spend its epochs re-learning the teacher mapping that stage had (the ViT comes from the stage's --init)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "student" not in saved:
        raise ValueError(f"--init-projector {checkpoint} is not a distill checkpoint (no student weights in it)")
    state = {k.removeprefix("project."): v for k, v in saved["student"].items() if k.startswith("project.")}
    kind = saved.get("config", {}).get("projector", "linear")  # a checkpoint from before the flag: linear
    try:
        student.project.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"--init-projector {checkpoint} holds a {kind} projector that does not fit this one: "
                         f"pass --projector {kind} and the teacher that run distilled") from None


def standardisation(embeddings: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D_t) teacher embeddings of view set 0 -> per-dimension mean and std (D_t,): every target's units."""
    stats = embeddings.astype(np.float32)
    return torch.from_numpy(stats.mean(0)), torch.from_numpy(stats.std(0)).clamp(min=1e-3)


def view_cache(cfg: DistillConfig, teacher: Teacher) -> Path:
    """The run's view cache folder: --cache, or one per teacher and view recipe under $PROMPTSERVE_CACHE."""
    if cfg.cache:
        return Path(cfg.cache)
    return cache_dir().parent / "teacher" / f"{teacher.sha256[:12]}-{cfg.recipe.key()}"


def unlabeled_source(cfg: DistillConfig, data_cfg, cache: Path, teacher: Teacher, log
                     ) -> tuple[Path, np.ndarray, np.ndarray]:
    """(view cache, images, labels -1) of `--unlabeled`: cached inside the train split's view cache, under the
    images' digest, so that cache is reused with or without them. Refuses the train data or a probed task: their
    test images would leak into the student and inflate the very numbers that judge it."""
    from training.data import data_source

    source = Path(cfg.unlabeled).resolve()
    judged = [cfg.data, *cfg.probe]
    for value in judged:
        try:
            path = data_source(value).resolve()
        except ValueError:
            continue  # the loaders report a missing --data / --probe path themselves
        if source == path or path in source.parents or source in path.parents:
            raise ValueError(f"--unlabeled {cfg.unlabeled} overlaps {value} (--data or --probe): its test images "
                             "would be distilled into the student that they judge; pass a folder of other images")
    try:
        extra = load_unlabeled(source, data_cfg.input_size, data_cfg.interpolation)
    except ValueError as e:
        raise ValueError(f"--unlabeled {cfg.unlabeled}: {e}") from None
    if cfg.limit_train:  # a smoke run is small in every source
        backbone_training.keep_seeded_subset(extra, cfg.limit_train, cfg.seed)
    folder = cache / f"unlabeled-{image_digest(extra.images, extra.labels)}"
    check_view_cache(folder, teacher, extra.images, extra.labels, cfg.recipe)
    log(f"[distill] --unlabeled {cfg.unlabeled}: {len(extra):,} images join every epoch (views cached in {folder})")
    return folder, extra.images, extra.labels


def grow_blocks(state: dict[str, torch.Tensor], depth: int, new_depth: int) -> dict[str, torch.Tensor]:
    """A depth-`depth` timm ViT state dict -> one of `new_depth` blocks that computes the same function.

    Old block i keeps its weights and order; each new block is a copy of the old block before it (spread
    evenly: 6 -> 9 gives 0 0' 1 2 2' 3 4 4' 5) whose residual branches end in zeroed projections (attn.proj,
    mlp.fc2), so it starts as the identity but with trained query/key/value and fc1 weights to learn from.
    """
    if new_depth < depth:
        raise ValueError(f"--depth {new_depth} is below the --init backbone's depth {depth}: blocks are only added")
    grown = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for j in range(new_depth):
        i = j * depth // new_depth  # (j: 0..new_depth-1) -> old block, non-decreasing, each old block hit
        copy = j > 0 and i == (j - 1) * depth // new_depth  # the block before it came from the same old block
        for rest in (k.split(".", 2)[2] for k in state if k.startswith(f"blocks.{i}.")):
            value = state[f"blocks.{i}.{rest}"].clone()
            if copy and rest.startswith(("attn.proj.", "mlp.fc2.")):
                value.zero_()
            grown[f"blocks.{j}.{rest}"] = value
    return grown


def distill(cfg: DistillConfig, log=logger.info) -> dict:
    from training.probe import load_probe_data, module_extractor, probe_all

    backbone_training.start(cfg)
    out = Path(cfg.out)
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and bf16_is_native(torch.device("cpu")))  # trains on the CPU

    if cfg.init:
        from promptserve.backbone import Backbone

        init = Backbone.from_file(cfg.init)
        name, kwargs = init.name, {k: v for k, v in init.timm_kwargs.items() if k != "num_classes"}
        state = {k: v.float() for k, v in init.model.state_dict().items()}
        if cfg.depth is not None and cfg.depth != init.num_layers:
            state = grow_blocks(state, init.num_layers, cfg.depth)
            log(f"[distill] grew {cfg.init} from {init.num_layers} to {cfg.depth} blocks")
            kwargs["depth"] = cfg.depth
    else:
        name, kwargs, state = cfg.model, dict(cfg.model_kwargs), None
    vit, data_cfg, train, test = backbone_training.vit_and_data(cfg, name, kwargs)
    vit.reset_classifier(len(train.classes))
    if state is not None:
        if state["head.weight"].shape[0] != len(train.classes):  # another label set: keep the features only
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = vit.load_state_dict(state, strict=False)  # only a dropped head may be missing
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"--init {cfg.init} does not fit {name} {kwargs}: missing {missing}, "
                             f"unexpected {unexpected}")

    teacher = Teacher(cfg.teacher, threads=torch.get_num_threads())
    # the projector needs only the teacher's width: a --init-projector that does not fit fails here, before the
    # teacher's passes over a fresh view cache
    student = Student(vit, teacher.dim, cfg.projector)
    if cfg.init_projector:
        load_projector(student, cfg.init_projector)
        log(f"[distill] projector from {cfg.init_projector}")
    cache = view_cache(cfg, teacher)
    log(f"[distill] teacher {teacher.path.name} ({teacher.dim}-d, input {teacher.input_size}px); view cache {cache}")
    check_view_cache(cache, teacher, train.images, train.labels, cfg.recipe)
    sources = [(cache, train.images, train.labels)]  # (view cache, images, labels) of every image source
    if cfg.unlabeled:
        sources.append(unlabeled_source(cfg, data_cfg, cache, teacher, log))

    held: dict[int, dict[str, np.ndarray]] = {}  # the view set last read (~250 MB for CIFAR-10): one at a time

    def view_set(k: int) -> dict[str, np.ndarray]:
        """View set k of every source, concatenated (the train split's first)."""
        if k not in held:  # the statistics and epoch 0 share view set 0; --views 1 reads it once per run
            parts = []
            for folder, images, labels in sources:
                ensure_view_set(folder, teacher, images, labels, k, cfg.recipe, log=log)
                parts.append(load_views(folder, k))
            held.clear()
            held[k] = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return held[k]

    # from the train split's views: unlabeled images do not move it, so a stage with them regresses the same
    # targets as one without
    mean, std = standardisation(view_set(0)["embeddings"][:len(train)])

    params = list(student.parameters())
    opt = backbone_training.optimizer(student, cfg)
    steps = len(view_set(0)["embeddings"]) // cfg.batch_size
    total, warmup = steps * cfg.epochs, int(cfg.warmup_epochs * steps)
    n_train = sum(p.numel() for p in params)
    unlabeled_note = f" + {len(sources[1][1]):,} unlabeled" if cfg.unlabeled else ""
    log(f"[distill] {len(train):,} images{unlabeled_note} x {cfg.views} view sets, {cfg.epochs} epochs x {steps} "
        f"steps, batch {cfg.batch_size}, AdamW lr {cfg.lr:g} wd {cfg.weight_decay:g}, ce weight {cfg.ce_weight:g}, "
        f"{cfg.projector} projector, "
        f"{'bf16 autocast' if amp else 'float32'}, trainable {n_train:,} params (all)")

    probes = [load_probe_data(d, data_cfg.input_size, data_cfg.interpolation, cfg.probe_train_size)
              for d in cfg.probe]
    checkpoint = backbone_training.Checkpoint(cfg, "student", student, opt)
    history, first_epoch = checkpoint.resume()
    if first_epoch:
        log(f"[distill] resumed from {cfg.checkpoint} at epoch {first_epoch}")
    elif probes:  # epoch 0 of the curve: the starting point
        history.append({"epoch": 0, "probe": probe_all(module_extractor(vit, name, kwargs), probes)})
        log(json.dumps(history[-1]))

    gen, clock = torch.Generator(), EpochClock(first_epoch, cfg.epochs, log, "distill")
    for epoch in range(first_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)  # resume-safe: the order depends on the epoch index only
        views = view_set(epoch % cfg.views)
        emb = (torch.from_numpy(views["embeddings"].astype(np.float32)) - mean) / std  # (N, D_t) standardised
        label_a, label_b = torch.from_numpy(views["label_a"]), torch.from_numpy(views["label_b"])
        weight = torch.from_numpy(views["weight"])
        order = torch.randperm(len(emb), generator=gen)

        def batch(i: int, order=order, views=views, emb=emb, label_a=label_a, label_b=label_b, weight=weight):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = normalise(views["views"][idx.numpy()], data_cfg)  # (B, 3, S, S)
            return x, (emb[idx], label_a[idx], label_b[idx], weight[idx])

        student.train()
        t0 = time.time()
        result = train_epoch(student, opt, params, batch, steps, lambda s: lr_at(s, total, warmup, cfg.lr),
                             epoch * steps, grad_clip=1.0, label_smoothing=0.0, device=torch.device("cpu"), amp=amp,
                             desc=f"distill {epoch + 1}/{cfg.epochs}",
                             criterion=lambda o, t: distill_loss(o, t, cfg.ce_weight))
        seconds = time.time() - t0
        last = epoch + 1 == cfg.epochs
        test_acc, test_images = backbone_training.score_on_test(vit, data_cfg, test, last)
        row = {"epoch": epoch + 1, **{k: round(v, 4) for k, v in result.items()}, "test_acc": round(test_acc, 4),
               "test_images": test_images, "seconds": round(seconds, 1),
               "threads": torch.get_num_threads(), "amp": amp}
        if probes:
            row["probe"] = probe_all(module_extractor(vit, name, kwargs), probes)
        history.append(row)
        log(json.dumps(row))
        checkpoint.save(history, epoch + 1)
        backbone_training.export_backbone(vit, name, {**kwargs, "num_classes": len(train.classes)}, train.classes,
                                          row["test_acc"], epoch + 1, out,
                                          {"distill_config": json.dumps(asdict(cfg)),
                                           "teacher": f"{teacher.path.name} sha256 {teacher.sha256}"})
        clock.epoch_done(epoch + 1)
    return {"history": history, "out": str(out)}
