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

from promptserve import naming
from promptserve.cli import (
    BACKBONE_FLAG,
    PRETRAINED_FLAG,
    RANDOM_INIT_FLAG,
    TIMM_KWARGS_FLAG,
    WEIGHTS_FLAG,
    artifact_metadata,
    backbone_from_flags,
    fail,
    read_token_file,
)
from promptserve.client import ADMIN_TOKEN_ENV, resolve_token
from training.config import TrainConfig

_D = TrainConfig  # defaults live in one place: the dataclass


def _log(msg: str) -> None:
    """The commands' progress lines, on stdout (library code logs; the CLI hands it this instead)."""
    typer.echo(msg)


def default_task_name(out: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", out.name.removesuffix(".safetensors").lower()).strip("-._")
    return name or "task"


def parse_train_size(value: str) -> int | None:
    """`--train-size`: a positive image count, or 'all' (every training image)."""
    if value.strip().lower() == "all":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise typer.BadParameter(f"{value!r}: use a positive number of images, or 'all'", param_hint="--train-size")
    return size


def push_artifact(target: str, task: str, blob: bytes, token: str | None = None) -> str:
    """Store path / redis URL: prompt_store.open_store(target).put(task, bytes).
    http(s) URL: promptserve.Client(target, token).push(task, bytes), as `promptserve push` does."""
    naming.check_task_name(task, error=typer.BadParameter)
    if target.startswith(("http://", "https://")):
        from promptserve.client import Client, ClientError

        try:
            with Client(target, token) as client:
                record = client.push(task, blob)
        except ClientError as e:
            fail(f"the upload to {target} failed: {e}", 1)
        return f"{record['version']} ({record['size']} bytes, {len(record['labels'])} labels)"
    from prompt_store import open_store  # lazy: the registry package is optional for training

    result = open_store(target).put(task, blob)
    return str(result)


def train(
    data: str = typer.Option(..., help="ImageFolder dir or .tar (train/, test/, optional val/), or fmnist:DIR"),
    backbone: str = BACKBONE_FLAG, pretrained: bool = PRETRAINED_FLAG, weights: str = WEIGHTS_FLAG,
    random_init: bool = RANDOM_INIT_FLAG, timm_kwargs: str = TIMM_KWARGS_FLAG,
    out: Path = typer.Option(..., help="artifact path (*.safetensors); report and plots are written beside it"),
    method: str = typer.Option(_D.method, help="linear | vpt-shallow | vpt-deep | e2vpt | full"),
    epochs: int = typer.Option(_D.epochs, help="epochs of the final training (and of e2vpt's stage 1)"),
    batch_size: int = typer.Option(_D.batch_size, help="images per optimizer step"),
    optimizer: str = typer.Option(_D.optimizer, help="sgd (momentum 0.9) | adamw"),
    lr: float | None = typer.Option(None, help="base lr for batch 256 (scaled by batch/256)",
                                    show_default="the method's: the hp-search grid's centre"),
    weight_decay: float | None = typer.Option(None, help="AdamW / SGD weight decay",
                                              show_default="the optimizer's: the grid's centre"),
    warmup_epochs: float = typer.Option(_D.warmup_epochs, help="linear warm-up before the cosine decay"),
    visual_tokens: int = typer.Option(_D.visual_tokens, help="visual prompt tokens per layer"),
    kv_tokens: int = typer.Option(_D.kv_tokens, help="key-value prompt tokens per layer (e2vpt)"),
    separate_kv: bool = typer.Option(False, help="separate key and value prompts instead of one shared tensor"),
    train_size: str = typer.Option(str(_D.train_size), help="class-balanced seeded subset (VTAB-1k: 1000), or "
                                   "'all' for every training image"),
    val_fraction: float = typer.Option(_D.val_fraction, help="validation split when the data has no val/: this "
                                       "fraction of the training images, class-balanced (0: none)"),
    val_max: int = typer.Option(_D.val_max, help="at most this many validation images (VTAB-1k: 800/200)"),
    val_group: str = typer.Option(None, help="regex on '<class>/<file name>': images whose match (its first group "
                                  "if any) is alike are never split between train and val, e.g. frames of one "
                                  "video: '^([^/]+/\\d+)_'", show_default="every image its own group"),
    seeds: int = typer.Option(_D.seeds, help="train the final config with N seeds: report mean +- sd, save the "
                              "best seed on validation (val is then kept out of the final runs)"),
    prompt_dropout: float = typer.Option(_D.prompt_dropout, help="dropout on the visual prompts while training "
                                         "(official code: 0.1)"),
    seed: int = typer.Option(_D.seed, help="seed of the subset, the split, the inits and the batch order"),
    augment: bool = typer.Option(_D.augment, help="random crop + flip of the training images"),
    flip: bool = typer.Option(_D.flip, help="with --augment: --no-flip keeps the crop and leaves the flip out "
                              "(signs, digits, text: a mirror image is another class or none)"),
    trainable: str = typer.Option(None, help="--method full: fine-tune only the backbone weights whose names this "
                                  "regex finds, e.g. '^blocks\\.[01]\\.' (the first two blocks); the new head always "
                                  "trains", show_default="every weight"),
    amp: bool = typer.Option(_D.amp, help="bf16 autocast where the hardware runs it natively (CUDA; a CPU with "
                             "AMX or AVX512-BF16); --no-amp: float32 everywhere"),
    token_prune: float = typer.Option(_D.token_prune, help="fraction of visual tokens pruned per layer"),
    segment_prune: float = typer.Option(_D.segment_prune, help="fraction of kept tokens' segments zeroed"),
    segments: int = typer.Option(_D.segments, help="segments per token (paper 8, official code 16)"),
    interleaved: bool = typer.Option(False, help="interleaved segments (dim j in segment j mod R)"),
    importance: str = typer.Option(_D.importance, help="abs: E|dL/drho| over stage-1 batches (paper); signed: "
                                   "E[dL/drho] from one pass after stage 1 (official code); lowest pruned"),
    segment_rule: str = typer.Option(_D.segment_rule, help="global: lowest segments of each layer; per-token: "
                                     "the same count per token (official code)"),
    min_segments_kept: int = typer.Option(_D.min_segments_kept, help="per-token rule: segments every token keeps"),
    search: bool = typer.Option(False, help="choose the pruning ratios on the val split"),
    hp_search: bool | None = typer.Option(None, "--hp-search/--no-hp-search", help="lr x weight-decay grid "
                                          "scored on the val split, then the best retrained",
                                          show_default="on for prompt methods"),
    hp_epochs: int | None = typer.Option(None, help="epochs of each hp-search point", show_default="epochs // 2"),
    cache: bool = typer.Option(True, help="decode cache in $PROMPTSERVE_CACHE/datasets (~/.cache/promptserve/"
                               "datasets unless set; delete it to clear); --no-cache skips it"),
    final_on_all: bool = typer.Option(_D.final_on_all, help="train the final artifact on train + val"),
    threads: int = typer.Option(_D.threads, help="torch threads", show_default="torch's, one per core"),
    device: str = typer.Option(_D.device, help="cpu: the trainer runs on the CPU (GPU training is not supported "
                               "yet; serve picks cuda by itself)"),
    progress: bool = typer.Option(True, help="progress bars on stderr, where it is a terminal"),
    task_name: str = typer.Option("", help="task name for --push", show_default="from --out"),
    push: str = typer.Option("", help="store dir, redis:// URL, or http(s):// server to upload to"),
    token: str = typer.Option(None, help=f"admin token for an http(s) --push (env {ADMIN_TOKEN_ENV}); prefer the "
                              "env or --token-file", show_default=False),
    token_file: Path = typer.Option(None, "--token-file", exists=True, dir_okay=False,
                                    help="read the admin token for an http(s) --push from this file"),
) -> None:
    """Train one task; write the artifact, <out>.report.json and PNG plots; optionally push it."""
    from training.config import TrainConfigError
    from training.imagefolder import DatasetError
    from training.report import write_outputs
    from training.trainer import train_task

    try:
        cfg = TrainConfig(method=method, visual_tokens=visual_tokens, kv_tokens=kv_tokens, shared_kv=not separate_kv,
                          epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                          warmup_epochs=warmup_epochs, augment=augment, flip=flip, trainable=trainable, amp=amp,
                          train_size=parse_train_size(train_size), val_fraction=val_fraction, val_max=val_max,
                          val_group=val_group,
                          seeds=seeds, prompt_dropout=prompt_dropout,
                          segment_rule=segment_rule, min_segments_kept=min_segments_kept, hp_epochs=hp_epochs,
                          cache=cache,
                          final_on_all=final_on_all, seed=seed, token_prune=token_prune, segment_prune=segment_prune,
                          segments=segments, segment_layout="interleaved" if interleaved else "contiguous",
                          importance=importance, search=search, hp_search=hp_search, threads=threads, device=device,
                          progress=progress)
    except TrainConfigError as e:
        raise typer.BadParameter(str(e)) from None
    token = read_token_file(token_file) or token
    if push.startswith(("http://", "https://")) and not resolve_token(token):  # before training, not after
        fail(f"--push {push} needs the server's admin token: {ADMIN_TOKEN_ENV}, --token-file or --token")
    try:
        bb = backbone_from_flags(backbone, pretrained, weights, random_init, timm_kwargs)
        _log(f"backbone {bb.source.describe()} ({bb.num_params:,} params, fingerprint {bb.fingerprint[:12]})")
        result = train_task(cfg, data, bb, log=_log)
        out = Path(out)
        result["report"]["metrics"]["artifact_bytes"] = len(result["artifact"])
        result["report"]["artifact"] = str(out)
        for p in write_outputs(out, result["artifact"], result["report"]):
            _log(f"wrote {p}" + (f" ({len(result['artifact']):,} bytes)" if p == out else ""))
        if push:
            if result["kind"] != "prompt_set":
                raise typer.BadParameter("--push uploads prompt sets; a `full` artifact is a whole model")
            name = task_name or default_task_name(out)
            _log(f"pushed {name}: {push_artifact(push, name, result['artifact'], token)}")
    except (DatasetError, TrainConfigError) as e:  # a user's data or settings: one line, no traceback
        fail(str(e))
    except KeyboardInterrupt:
        _log("interrupted: nothing was written (the artifact, report and plots are written together at the end)")
        raise typer.Exit(130) from None


def evaluate(
    data: str = typer.Option(..., help="ImageFolder dir or .tar (only the --split folder is needed), or fmnist:DIR"),
    task: Path = typer.Option(..., help="a prompt set, or a `full` model artifact"),
    split: str = typer.Option("test", help="the split to score: test, val or train"),
    batch_size: int = typer.Option(256),
    dtype: str = typer.Option("float32", help="run in this precision, as `serve --dtype` does: float32, bfloat16 "
                              "(or float16 on a GPU); reports the top-1 agreement with float32 too"),
    backend: str = typer.Option("torch", help="run on this backend, as `serve --backend` does: torch or openvino "
                                "(the [openvino] extra); reports the top-1 agreement with float32 torch too"),
    backbone: str = BACKBONE_FLAG, pretrained: bool = PRETRAINED_FLAG, weights: str = WEIGHTS_FLAG,
    random_init: bool = RANDOM_INIT_FLAG, timm_kwargs: str = TIMM_KWARGS_FLAG,
) -> float:
    """Accuracy of an artifact on one split, computed exactly as the server computes predictions. Without
    --backbone, the backbone the artifact records is rebuilt (and its fingerprint checked)."""
    import numpy as np

    from training.data import load_splits
    from training.imagefolder import DatasetError
    from training.loop import accuracy_module

    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    if dtype == "float16":
        fail("--dtype float16 runs on a GPU only (the CPU's half type is bfloat16), as `serve` refuses it too")
    from promptserve.backends import BACKENDS, OPENVINO_EXTRA_MISSING, openvino_installed

    if backend not in BACKENDS:
        fail(f"--backend {backend!r}: use {' or '.join(BACKENDS)}")
    if backend == "openvino" and not openvino_installed():
        fail(OPENVINO_EXTRA_MISSING)
    reference_only = dtype == "float32" and backend == "torch"
    meta = artifact_metadata(task)
    full = meta.get("method") == "full" and "timm_name" in meta
    if full and (backbone or pretrained or weights or random_init):
        fail(f"{task} is a `full` model: it is its own backbone, drop --backbone/--pretrained/--weights")
    bb = (backbone_from_flags(str(task)) if full else
          backbone_from_flags(backbone, pretrained, weights, random_init, timm_kwargs, (str(task), meta)))
    dc = bb.data_config
    try:  # only the asked split is listed and decoded: a folder with just test/ works
        (arr,) = load_splits(data, dc.input_size, dc.interpolation, progress=True, splits=(split,))
    except DatasetError as e:
        fail(str(e))
    if arr is None:
        fail(f"{data} has no '{split}' split ({split}/<class>/<image> folders)")
    labels = json.loads(meta.get("labels", "[]"))
    index = {c: i for i, c in enumerate(labels)}
    unknown = sorted(set(arr.classes) - set(index))
    if unknown:
        fail(f"classes {unknown} of {data} are not among the artifact's labels")
    y = np.asarray([index[arr.classes[i]] for i in arr.labels], dtype=np.int64)
    agreement = None
    if full:
        if not reference_only:
            fail("--dtype and --backend apply to prompt sets (what the server runs); a `full` model is scored in "
                 "float32 torch")
        acc = accuracy_module(bb.model, dc, arr.images, y, batch_size, progress=True)
    else:
        import torch

        from promptserve.promptset import PromptSet
        from training.loop import predict_prompt_set

        ps = PromptSet.load(task)
        reference = predict_prompt_set(bb, ps, arr.images, batch_size, progress=True)
        pred = reference if reference_only else predict_prompt_set(bb, ps, arr.images, batch_size, progress=True,
                                                                   dtype=getattr(torch, dtype), backend=backend)
        acc, agreement = float((pred == y).mean()), float((pred == reference).mean())
    stored = json.loads(meta.get("metrics", "{}")).get(f"{split}_acc")
    line = f"{split} accuracy {acc:.4f} on {len(y)} images of {data}"
    if not reference_only:
        line += f" in {dtype} on {backend} (top-1 agreement with float32 torch: {agreement:.4f})"
    # the human line on stderr, the JSON alone on stdout: `promptserve eval ... > result.json` is JSON
    typer.echo(line + (f" (stored in the artifact at training: {stored:.4f})" if stored is not None else ""), err=True)
    typer.echo(json.dumps({"task": default_task_name(task), "file": str(task), "split": split, "images": len(y),
                           "accuracy": acc, "dtype": dtype, "backend": backend, "agreement_with_float32": agreement,
                           "stored_accuracy": stored}))
    return acc


def pretrain(
    data: str = typer.Option(..., help="ImageFolder dir or .tar with train/ and test/ (e.g. cifar10.tar)"),
    out: Path = typer.Option(..., help="weights .safetensors (fp16, with the metadata Backbone.from_file reads)"),
    model: str = typer.Option("vit_tiny_patch16_224", help="timm model name"),
    model_kwargs: str = typer.Option('{"img_size": 32, "patch_size": 4, "depth": 6}', help="JSON timm kwargs"),
    epochs: int = typer.Option(30), batch_size: int = typer.Option(128), lr: float = typer.Option(1e-3),
    warmup_epochs: float = typer.Option(2.0), seed: int = typer.Option(0),
    threads: int = typer.Option(0, help="torch threads (0: torch's default); may change on --resume"),
    limit_train: int = typer.Option(0, help="use only N training images (smoke runs)"),
    resume: bool = typer.Option(False, help="continue from <out>.ckpt.pt (same recipe; saved after every epoch)"),
) -> None:
    """Pretrain the small demo backbone from scratch, checkpointing every epoch to <out>.ckpt.pt."""
    from training.pretrain import PretrainConfig
    from training.pretrain import pretrain as run_pretrain

    cfg = PretrainConfig(data=data, out=str(out), model=model, model_kwargs=json.loads(model_kwargs), epochs=epochs,
                         batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, seed=seed, threads=threads,
                         limit_train=limit_train, resume=resume)
    try:
        result = run_pretrain(cfg, log=_log)
    except KeyboardInterrupt:
        _log("interrupted: the last finished epoch's checkpoint and weights are kept; rerun with --resume")
        raise typer.Exit(130) from None
    except (FileExistsError, ValueError) as e:
        fail(str(e))
    _log(json.dumps(result["history"][-1]))


def distill(
    data: str = typer.Option(..., help="ImageFolder dir or .tar with train/ and test/ (e.g. cifar10.tar): the "
                             "images the teacher and student both see, and the labels of the --ce-weight term"),
    teacher: Path = typer.Option(..., help="TFLite embedding model, e.g. ../shared/teachers/"
                                 "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"),
    out: Path = typer.Option(..., help="student backbone .safetensors (checkpoint beside it: <out>.ckpt.pt)"),
    init: str = typer.Option(None, help="project backbone file to start from",
                             show_default="random init of --model"),
    model: str = typer.Option("vit_tiny_patch16_224", help="timm model name, without --init"),
    model_kwargs: str = typer.Option('{"img_size": 32, "patch_size": 4, "depth": 6}',
                                     help="JSON timm kwargs, without --init"),
    depth: int = typer.Option(None, help="with --init: grow it to this many blocks (new ones start as "
                              "identities: the start computes what --init does)", show_default="--init's depth"),
    views: int = typer.Option(8, help="fixed view sets: the teacher embeds views x images, once"),
    min_scale: float = typer.Option(0.35, help="random-resized crop: smallest area kept"),
    mix: float = typer.Option(0.5, help="fraction of views mixed (mixup) with another image's view"),
    cache: Path = typer.Option(None, help="view cache folder", show_default="$PROMPTSERVE_CACHE/teacher/..."),
    epochs: int = typer.Option(30, help="epochs over the train images (epoch e uses view set e mod --views)"),
    batch_size: int = typer.Option(128, help="images per step"),
    lr: float = typer.Option(5e-4, help="AdamW peak learning rate (cosine after --warmup-epochs)"),
    warmup_epochs: float = typer.Option(1.0, help="linear warm-up epochs"),
    ce_weight: float = typer.Option(0.3, help="weight of the cross-entropy on the data's labels (0: none)"),
    projector: str = typer.Option("linear", help="head onto the teacher's embedding, dropped after training: "
                                  "linear or mlp (one hidden layer)"),
    init_projector: Path = typer.Option(None, help="a distill run's <out>.ckpt.pt whose projector this stage "
                                        "starts from (with --init the backbone that run exported): a continued "
                                        "stage keeps the teacher mapping it had", show_default="a new projector"),
    unlabeled: str = typer.Option(None, help="more images for the views, any folder layout (a directory or "
                                  ".tar; labels unused, e.g. python -m training.synthetic's dead leaves): the "
                                  "teacher is asked about them too", show_default="none"),
    amp: str = typer.Option("auto", help="bf16 autocast: auto (where the CPU has AMX/AVX512-BF16), bf16, off"),
    probe: list[str] = typer.Option([], help="a task (--data value) to linear-probe after every epoch; repeat"),
    seed: int = typer.Option(0, help="seed of the views, the init of new layers and the batch order"),
    threads: int = typer.Option(0, help="torch threads (0: torch's default); may change on --resume"),
    limit_train: int = typer.Option(0, help="use only N training (and N --unlabeled) images (smoke runs; 0: all)"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>.ckpt.pt (same recipe)"),
) -> None:
    """Distil a frozen teacher's embedding into a ViT backbone (function matching on cached views)."""
    from training.distill import DistillConfig
    from training.distill import distill as run_distill
    from training.teacher import TeacherError

    try:
        cfg = DistillConfig(data=data, teacher=str(teacher), out=str(out), init=init, depth=depth, model=model,
                            model_kwargs=json.loads(model_kwargs), views=views, min_scale=min_scale, mix=mix,
                            cache=None if cache is None else str(cache), epochs=epochs, batch_size=batch_size,
                            lr=lr, warmup_epochs=warmup_epochs, ce_weight=ce_weight, projector=projector,
                            init_projector=None if init_projector is None else str(init_projector),
                            unlabeled=unlabeled, amp=amp,
                            probe=list(probe), seed=seed, threads=threads, limit_train=limit_train, resume=resume)
        result = run_distill(cfg, log=_log)
    except KeyboardInterrupt:
        _log("interrupted: the last finished epoch's checkpoint and weights are kept; rerun with --resume")
        raise typer.Exit(130) from None
    except (FileExistsError, ValueError, TeacherError) as e:
        fail(str(e))
    _log(json.dumps(result["history"][-1]))


def probe(
    data: list[str] = typer.Option(..., help="a task: ImageFolder dir or .tar with train/ and test/, or "
                                   "fmnist:DIR; repeat for several"),
    backbone: str = BACKBONE_FLAG, pretrained: bool = PRETRAINED_FLAG, weights: str = WEIGHTS_FLAG,
    random_init: bool = RANDOM_INIT_FLAG, timm_kwargs: str = TIMM_KWARGS_FLAG,
    teacher: Path = typer.Option(None, help="probe this TFLite teacher's embedding instead of a backbone (it sees "
                                 "the same images, upsampled from the backbone's input size)"),
    input_size: int = typer.Option(32, help="image size with --teacher (without it: the backbone's)"),
    train_size: int = typer.Option(1000, help="class-balanced training images per task (VTAB-1k: 1000)"),
    c: float = typer.Option(0.1, "--c", help="inverse L2 strength of the logistic regression"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the table"),
) -> None:
    """Linear probe of frozen features: logistic regression on a backbone's pooled features, test accuracy."""
    from training.probe import backbone_extractor, load_probe_data, probe_all

    if teacher is not None:
        if backbone:
            fail("--teacher and --backbone are alternatives: give one")
        from training.teacher import Teacher, TeacherError

        try:
            t = Teacher(teacher)
        except TeacherError as e:
            fail(str(e))
        extract, size, interp, what = t.embed, input_size, "bicubic", f"teacher {teacher.name}"
    else:
        bb = backbone_from_flags(backbone, pretrained, weights, random_init, timm_kwargs)
        extract, what = backbone_extractor(bb), f"backbone {backbone}"
        size, interp = bb.data_config.input_size, bb.data_config.interpolation
    from training.imagefolder import DatasetError

    try:
        datasets = [load_probe_data(d, size, interp, train_size) for d in data]
        result = probe_all(extract, datasets, c)
    except (DatasetError, RuntimeError, ValueError) as e:
        fail(str(e))
    result = {"features": what, "input_size": size, "C": c, **result}
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"linear probe of {what} ({size}x{size} images, C={c:g})")
    for row in result["tasks"]:
        typer.echo(f"  {row['task']:<16} train {row['train']:>5}  test {row['test']:>6}  {100 * row['accuracy']:.1f}%")
    typer.echo(f"  {'mean':<16} {'':>25}  {100 * result['mean']:.1f}%")


if __name__ == "__main__":  # python -m training.cli train ... (without the promptserve entry point)
    app = typer.Typer(add_completion=False)
    for fn, name in ((train, "train"), (evaluate, "eval"), (pretrain, "pretrain"), (distill, "distill"),
                     (probe, "probe")):
        app.command(name)(fn)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())
