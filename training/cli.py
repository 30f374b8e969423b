"""`promptserve train | eval | pretrain`: plain functions with typer options, registered by promptserve.cli.

Nothing is written until a run has finished (artifact, report and plots go through temp file + rename),
so Ctrl-C at any point leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import typer

from training.config import TrainConfig

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_D = TrainConfig  # defaults live in one place: the dataclass


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_backbone(backbone: str, weights: Path | None = None, timm_kwargs: str = "{}"):
    """A weights file written by `promptserve pretrain` (timm name in its metadata), or a timm model name
    with optional --weights and --timm-kwargs JSON."""
    from promptserve.backbone import Backbone

    if Path(backbone).is_file():
        return Backbone.from_file(backbone)
    try:
        kwargs = json.loads(timm_kwargs or "{}")
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"--timm-kwargs is not JSON: {e}") from None
    return Backbone.from_timm(backbone, weights=weights, **kwargs)


def default_task_name(out: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", out.name.removesuffix(".safetensors").lower()).strip("-._")
    return name or "task"


def push_artifact(target: str, task: str, blob: bytes, token: str = "") -> str:
    """Store path / redis URL: prompt_store.open_store(target).put(task, bytes).
    http(s) URL: PUT {target}/tasks/{task} with the bytes and `Authorization: Bearer <token>`."""
    if not TASK_NAME.match(task):
        raise typer.BadParameter(f"task name {task!r} must match {TASK_NAME.pattern}")
    if target.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"{target.rstrip('/')}/tasks/{task}", data=blob, method="PUT",
                                     headers={"Content-Type": "application/octet-stream",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return f"{resp.status} {resp.read(500).decode(errors='replace')}"
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"server refused the upload: {e.code} {e.read(1000).decode(errors='replace')}") from None
    from prompt_store import open_store  # lazy: the registry package is optional for training

    result = open_store(target).put(task, blob)
    return str(result)


def train(
    data: str = typer.Option(..., help="ImageFolder dir or .tar (train/, test/, optional val/), or fmnist:DIR"),
    backbone: str = typer.Option(..., help="weights file from `promptserve pretrain`, or a timm model name"),
    out: Path = typer.Option(..., help="artifact path (*.safetensors); report and plots are written beside it"),
    method: str = typer.Option(_D.method, help="linear | vpt-shallow | vpt-deep | e2vpt | full"),
    weights: Path | None = typer.Option(None, help="weights for a timm-name --backbone (.safetensors/.pth)"),
    timm_kwargs: str = typer.Option("{}", help="JSON kwargs for timm.create_model with a timm-name --backbone"),
    epochs: int = typer.Option(_D.epochs), batch_size: int = typer.Option(_D.batch_size),
    optimizer: str = typer.Option(_D.optimizer, help="sgd (momentum 0.9) | adamw"),
    lr: float = typer.Option(_D.lr, help="base lr for batch 256 (scaled by batch/256); 0: method default"),
    weight_decay: float = typer.Option(_D.weight_decay, help="-1: the optimizer's default"),
    warmup_epochs: float = typer.Option(_D.warmup_epochs),
    visual_tokens: int = typer.Option(_D.visual_tokens, help="visual prompt tokens per layer"),
    kv_tokens: int = typer.Option(_D.kv_tokens, help="key-value prompt tokens per layer (e2vpt)"),
    separate_kv: bool = typer.Option(False, help="separate key and value prompts instead of one shared tensor"),
    train_size: int = typer.Option(_D.train_size, help="class-balanced seeded subset (VTAB-1k: 1000); 0: all"),
    val_size: int = typer.Option(_D.val_size, help="held out of the subset for tuning (800/200)"),
    seed: int = typer.Option(_D.seed), augment: bool = typer.Option(_D.augment, help="random crop + flip"),
    token_prune: float = typer.Option(_D.token_prune, help="fraction of visual tokens pruned per layer"),
    segment_prune: float = typer.Option(_D.segment_prune, help="fraction of kept tokens' segments zeroed"),
    segments: int = typer.Option(_D.segments, help="segments per token (paper 8, official code 16)"),
    interleaved: bool = typer.Option(False, help="interleaved segments (dim j in segment j mod R)"),
    importance: str = typer.Option(_D.importance, help="abs: E|dL/drho| ; signed: -E[dL/drho]"),
    search: bool = typer.Option(False, help="choose the pruning ratios on the val split"),
    hp_search: bool = typer.Option(False, help="lr x weight-decay grid on the val split (expensive)"),
    final_on_all: bool = typer.Option(_D.final_on_all, help="train the final artifact on train + val"),
    threads: int = typer.Option(_D.threads), device: str = typer.Option(_D.device),
    progress: bool = typer.Option(True, help="progress bars"),
    task_name: str = typer.Option("", help="task name for --push (default: from --out)"),
    push: str = typer.Option("", help="store dir, redis:// URL, or http(s):// server to upload to"),
    token: str = typer.Option("", envvar="PROMPTSERVE_TOKEN", help="bearer token for an http --push"),
) -> None:
    """Train one task; write the artifact, <out>.report.json and PNG plots; optionally push it."""
    from training.report import write_atomic, write_report
    from training.trainer import train_task

    cfg = TrainConfig(method=method, visual_tokens=visual_tokens, kv_tokens=kv_tokens, shared_kv=not separate_kv,
                      epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                      warmup_epochs=warmup_epochs, augment=augment, train_size=train_size, val_size=val_size,
                      final_on_all=final_on_all, seed=seed, token_prune=token_prune, segment_prune=segment_prune,
                      segments=segments, segment_layout="interleaved" if interleaved else "contiguous",
                      importance=importance, search=search, hp_search=hp_search, threads=threads, device=device,
                      progress=progress)
    try:
        bb = load_backbone(backbone, weights, timm_kwargs)
        _log(f"backbone {bb.spec} ({bb.num_params:,} params, fingerprint {bb.fingerprint[:12]})")
        result = train_task(cfg, data, bb, log=_log)
        out = Path(out)
        write_atomic(out, result["artifact"])
        result["report"]["metrics"]["artifact_bytes"] = len(result["artifact"])
        result["report"]["artifact"] = str(out)
        for p in write_report(result["report"], out.parent, out.name.removesuffix(".safetensors")):
            _log(f"wrote {p}")
        _log(f"wrote {out} ({len(result['artifact']):,} bytes)")
        if push:
            if result["kind"] != "prompt_set":
                raise typer.BadParameter("--push uploads prompt sets; a `full` artifact is a whole model")
            _log(f"pushed {task_name or default_task_name(out)}: "
                 f"{push_artifact(push, task_name or default_task_name(out), result['artifact'], token)}")
    except KeyboardInterrupt:
        _log("interrupted: every file is written whole (temp file + rename) or not at all")
        raise typer.Exit(130) from None


def evaluate(
    data: str = typer.Option(..., help="ImageFolder dir or .tar, or fmnist:DIR"),
    task: Path = typer.Option(..., help="a prompt set, or a `full` model artifact"),
    backbone: str = typer.Option("", help="the backbone the prompt set was trained on (file or timm name)"),
    weights: Path | None = typer.Option(None), timm_kwargs: str = typer.Option("{}"),
    split: str = typer.Option("test"), batch_size: int = typer.Option(256),
) -> float:
    """Accuracy of an artifact on a split, computed exactly as the server computes predictions."""
    from safetensors import safe_open

    from training.data import load_splits
    from training.loop import accuracy_module, accuracy_prompt_set

    with safe_open(str(task), "pt") as f:
        meta = f.metadata() or {}
    full = meta.get("method") == "full" and "timm_name" in meta
    if full:
        bb = load_backbone(str(task))
    elif not backbone:
        raise typer.BadParameter("--backbone is needed to evaluate a prompt set (the weights it was trained on)")
    else:
        bb = load_backbone(backbone, weights, timm_kwargs)
    dc = bb.data_config
    splits = dict(zip(("train", "val", "test"), load_splits(data, dc.input_size, dc.interpolation), strict=True))
    arr = splits.get(split)
    if arr is None:
        raise typer.BadParameter(f"{data} has no '{split}' split")
    labels = json.loads(meta.get("labels", "[]"))
    index = {c: i for i, c in enumerate(labels)}
    unknown = sorted(set(arr.classes) - set(index))
    if unknown:
        raise typer.BadParameter(f"classes {unknown} of {data} are not among the artifact's labels")
    y = [index[arr.classes[i]] for i in arr.labels]
    import numpy as np

    y = np.asarray(y, dtype=np.int64)
    if full:
        acc = accuracy_module(bb.model, dc, arr.images, y, batch_size)
    else:
        from promptserve.promptset import PromptSet

        acc = accuracy_prompt_set(bb, PromptSet.load(task), arr.images, y, batch_size)
    print(json.dumps({"task": str(task), "split": split, "images": len(y), "accuracy": acc}), flush=True)
    return acc


def pretrain(
    data: str = typer.Option(..., help="ImageFolder dir or .tar with train/ and test/ (e.g. cifar10.tar)"),
    out: Path = typer.Option(..., help="weights .safetensors (fp16, with the metadata Backbone.from_file reads)"),
    model: str = typer.Option("vit_tiny_patch16_224", help="timm model name"),
    model_kwargs: str = typer.Option('{"img_size": 32, "patch_size": 4, "depth": 6}', help="JSON timm kwargs"),
    epochs: int = typer.Option(8), batch_size: int = typer.Option(128), lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0), threads: int = typer.Option(0),
    limit_train: int = typer.Option(0, help="use only N training images (smoke runs)"),
) -> None:
    """Pretrain the small demo backbone from scratch; resumes from <out>.ckpt.pt if present."""
    from training.pretrain import PretrainConfig
    from training.pretrain import pretrain as run_pretrain

    cfg = PretrainConfig(data=data, out=str(out), model=model, model_kwargs=json.loads(model_kwargs), epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, threads=threads, limit_train=limit_train)
    try:
        result = run_pretrain(cfg)
    except KeyboardInterrupt:
        _log("interrupted: the last finished epoch's checkpoint and weights are kept; rerun to resume")
        raise typer.Exit(130) from None
    _log(json.dumps(result["history"][-1]))


if __name__ == "__main__":  # python -m training.cli train ... (without the promptserve entry point)
    app = typer.Typer(add_completion=False)
    for fn, name in ((train, "train"), (evaluate, "eval"), (pretrain, "pretrain")):
        app.command(name)(fn)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())
