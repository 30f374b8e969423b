"""One training run end to end: data -> (tuning) -> method -> artifact evaluated as served -> report.

Protocol (VTAB-1k): a class-balanced `train_size` subset, split train/val (800/200) for every choice made
on data (--search pruning ratios, --hp-search lr x wd); the final artifact is then trained on train + val
(`final_on_all`) and tested on the full test split. Without any tuning the 200 are not held out for
nothing: the run trains on all of them and reports no val accuracy (set final_on_all=False to keep
the hold-out and report val accuracy of the final artifact instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from promptserve.backbone import Backbone
from promptserve.promptset import PromptSet
from training.config import TrainConfig
from training.data import TaskData, load_task, merge
from training.e2vpt import Importance, Pruning, apply_pruning, prune
from training.imagefolder import ImageArray
from training.loop import ModuleForward, PromptForward, accuracy_module, accuracy_prompt_set, features, fit
from training.methods import PromptParams, build_prompt_params, full_artifact_bytes, full_model, prompt_config_dict


@dataclass
class RunResult:
    """params (prompt methods) or model (full); everything report.json needs."""

    cfg: TrainConfig
    params: PromptParams | None = None
    model: torch.nn.Module | None = None
    history: list[dict] = field(default_factory=list)
    importance: dict | None = None  # {"token": {i: [...]}, "segment": {i: [[...]]}}
    pruning: Pruning | None = None
    search: list[dict] = field(default_factory=list)
    val_acc: float | None = None
    stage1_val_acc: float | None = None
    visual_before: dict[int, int] = field(default_factory=dict)


def setup_runtime(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)


def _prompt_set(params: PromptParams, backbone: Backbone, labels, cfg, metrics=None) -> PromptSet:
    return params.to_prompt_set(backbone, labels, cfg.method, prompt_config_dict(params, cfg), metrics)


def _val(backbone, params, labels, cfg, val: ImageArray | None) -> float | None:
    if val is None or len(val) == 0:
        return None
    ps = _prompt_set(params, backbone, labels, cfg)
    return accuracy_prompt_set(backbone, ps, val.images, val.labels, cfg.eval_batch_size)


def run_method(cfg: TrainConfig, backbone: Backbone, train: ImageArray, val: ImageArray | None,
               final: ImageArray, log=print) -> RunResult:
    """Train cfg.method. Choices (pruning ratios) are made on `val` with models trained on `train`;
    the returned model is trained on `final` (= train when no tuning is needed... or train + val)."""
    labels, C = train.classes, len(train.classes)
    res = RunResult(cfg)
    log(f"method {cfg.method}: the backbone's {backbone.num_params:,} weights are frozen for every prompt method "
        "and never enter the optimizer; each stage below logs its trainable count")
    if cfg.method == "full":
        model = full_model(backbone, C, cfg.seed)
        res.history = fit(ModuleForward(model, backbone.data_config), list(model.parameters()), final.images,
                          final.labels, cfg, desc="full", log=log)
        res.model = model
        return res
    if cfg.method == "linear":
        params = build_prompt_params(backbone, C, cfg)
        feats = features(backbone, final.images, cfg.eval_batch_size)  # (N, D), computed once

        def head(x):
            return torch.nn.functional.linear(x, params.head_weight, params.head_bias)

        res.history = fit(head, [params.head_weight, params.head_bias], feats, final.labels, cfg,
                          prepare=lambda inputs, idx: inputs[idx], desc="linear", log=log)
        if cfg.augment:
            log("note: linear probing trains on cached features; --augment is ignored for linear")
        res.params = params
        return res
    if not cfg.prunes:
        params = build_prompt_params(backbone, C, cfg)
        res.history = fit(PromptForward(backbone, params), list(params.parameters()), final.images, final.labels,
                          cfg, desc=cfg.method, log=log)
        res.params = params
        return res

    # ---- E2VPT with pruning: stage 1 (masks in the graph) -> scores -> prune -> rewind ----
    stage1_data = train if cfg.search else final
    params = build_prompt_params(backbone, C, cfg, with_masks=True)
    init_state = {k: v.detach().clone() for k, v in params.state_dict().items()}
    res.visual_before = params.visual_lengths()
    scorer = Importance(params, signed=cfg.importance == "signed")
    res.history = fit(PromptForward(backbone, params), list(params.parameters()), stage1_data.images,
                      stage1_data.labels, cfg, after_backward=scorer, desc="stage1", log=log)
    tok, seg = scorer.scores()
    res.importance = {"token": {str(i): t.tolist() for i, t in tok.items()},
                      "segment": {str(i): s.tolist() for i, s in seg.items()}, "batches": scorer.batches}
    if cfg.search:
        res.stage1_val_acc = _val(backbone, apply_pruning(params, prune(tok, seg, 0.0, 0.0)), labels, cfg, val)
        for tp in cfg.token_grid:
            for sp in cfg.segment_grid:
                cand = apply_pruning(params, prune(tok, seg, tp, sp))
                acc = _val(backbone, cand, labels, cfg, val)
                res.search.append({"token_prune": tp, "segment_prune": sp, "val_acc": acc})
                log(f"[search] token {tp:.2f} segment {sp:.2f}: val acc {acc:.4f} (unpruned stage 1 "
                    f"{res.stage1_val_acc:.4f})")
        best = max(r["val_acc"] for r in res.search)
        ok = [r for r in res.search if r["val_acc"] >= best - cfg.search_tolerance]
        pick = max(ok, key=lambda r: (r["token_prune"], r["segment_prune"]))
        cfg = replace(cfg, token_prune=pick["token_prune"], segment_prune=pick["segment_prune"])
        res.cfg, res.val_acc = cfg, pick["val_acc"]
        log(f"[search] chose token_prune={cfg.token_prune} segment_prune={cfg.segment_prune} "
            f"(val acc {pick['val_acc']:.4f}, best {best:.4f}, tolerance {cfg.search_tolerance})")
    res.pruning = prune(tok, seg, cfg.token_prune, cfg.segment_prune)
    rewound = apply_pruning(params, res.pruning, values=init_state)
    res.history += fit(PromptForward(backbone, rewound), list(rewound.parameters()), final.images, final.labels,
                       cfg, desc="rewind", salt=1, log=log)
    res.params = rewound
    return res


def tune_hparams(cfg: TrainConfig, backbone: Backbone, data: TaskData, log=print) -> tuple[TrainConfig, list[dict]]:
    """The paper's lr x wd grid: each pair trained on train, scored on val; the best pair wins."""
    rows = []
    for lr in cfg.lr_grid or [cfg.lr]:
        for wd in cfg.wd_grid or [cfg.weight_decay]:
            trial = replace(cfg, lr=lr, weight_decay=wd, hp_search=False, search=False, progress=False)
            res = run_method(trial, backbone, data.train, data.val, data.train, log=lambda *_: None)
            if res.params is not None:
                acc = _val(backbone, res.params, data.classes, trial, data.val)
            else:
                acc = accuracy_module(res.model, backbone.data_config, data.val.images, data.val.labels)
            rows.append({"lr": lr, "weight_decay": wd, "val_acc": acc})
            log(f"[hp-search] lr {lr:g} wd {wd:g}: val acc {acc:.4f}")
    best = max(rows, key=lambda r: r["val_acc"])
    return replace(cfg, lr=best["lr"], weight_decay=best["weight_decay"]), rows


def train_task(cfg: TrainConfig, data: str | TaskData, backbone: Backbone, log=print) -> dict:
    """Run everything; returns {"artifact": bytes, "kind": "prompt_set"|"full", "report": {...}}."""
    setup_runtime(cfg)
    t0 = time.time()
    if isinstance(data, str):
        dc = backbone.data_config
        data = load_task(data, dc.input_size, dc.interpolation, cfg.train_size, cfg.val_size, cfg.seed, log=log)
    log(f"data: {data.summary()}")
    hp_rows = []
    if cfg.hp_search:
        cfg, hp_rows = tune_hparams(cfg, backbone, data, log=log)
        log(f"[hp-search] chose lr {cfg.lr:g} wd {cfg.weight_decay:g}")
    tuned = cfg.hp_search or (cfg.search and cfg.prunes)
    final = merge(data.train, data.val) if (cfg.final_on_all and data.val is not None) else data.train
    if not tuned and cfg.final_on_all:
        log(f"no tuning asked: training on all {len(final)} images (train + val)")
    res = run_method(cfg, backbone, data.train, data.val, final, log=log)
    cfg = res.cfg
    train_seconds = time.time() - t0

    labels = data.classes
    metrics = {"train_images": len(final), "train_seconds": round(train_seconds, 1),
               "backbone_params": backbone.num_params, "val_acc": res.val_acc, "stage1_val_acc": res.stage1_val_acc}
    if hp_rows:
        metrics["hp_search_best_val_acc"] = max(r["val_acc"] for r in hp_rows)
    if res.params is not None:
        ps = _prompt_set(res.params, backbone, labels, cfg)
        ps = PromptSet.load(ps.to_bytes())  # evaluate the bytes that will be stored, as the server loads them
        if not tuned and not cfg.final_on_all and data.val is not None:
            metrics["val_acc"] = accuracy_prompt_set(backbone, ps, data.val.images, data.val.labels)
        if data.test is not None:
            metrics["test_acc"] = accuracy_prompt_set(backbone, ps, data.test.images, data.test.labels,
                                                      cfg.eval_batch_size)
        tuned_params = ps.num_params()
        metrics.update(tuned_params=tuned_params, prompt_params=ps.num_prompt_params(),
                       tuned_percent=100 * tuned_params / backbone.num_params)
        before = res.visual_before or res.params.visual_lengths()
        if res.pruning is not None:
            metrics.update(res.pruning.summary(before))
            metrics.pop("kept")
        m_total = sum(before.values())
        metrics["visual_tokens"] = m_total
        final_ps = _prompt_set(res.params, backbone, labels, cfg, metrics)
        metrics["prompt_set_bytes"] = len(final_ps.to_bytes())  # approximate: the metrics grow it a little
        final_ps = _prompt_set(res.params, backbone, labels, cfg, metrics)
        artifact, kind = final_ps.to_bytes(), "prompt_set"
    else:
        from safetensors.torch import load as st_load

        blob = full_artifact_bytes(res.model, backbone, labels, {"train": cfg.to_dict()}, {})
        model = full_model(backbone, len(labels), cfg.seed)
        model.load_state_dict({k: v.float() for k, v in st_load(blob).items()})  # the fp16 artifact, as loaded
        if data.test is not None:
            metrics["test_acc"] = accuracy_module(model, backbone.data_config, data.test.images, data.test.labels)
        if not tuned and not cfg.final_on_all and data.val is not None:
            metrics["val_acc"] = accuracy_module(model, backbone.data_config, data.val.images, data.val.labels)
        n = sum(p.numel() for p in res.model.parameters())
        metrics.update(tuned_params=n, tuned_percent=100 * n / backbone.num_params)
        artifact, kind = full_artifact_bytes(res.model, backbone, labels, {"train": cfg.to_dict()}, metrics), "full"
        metrics["artifact_bytes"] = len(artifact)
    metrics["total_seconds"] = round(time.time() - t0, 1)
    report = {"method": cfg.method, "config": cfg.to_dict(), "data": data.summary(), "labels": labels,
              "backbone": backbone.spec, "backbone_fingerprint": backbone.fingerprint, "metrics": metrics,
              "history": res.history, "importance": res.importance, "search": res.search, "hp_search": hp_rows,
              "pruning": res.pruning.summary(res.visual_before) if res.pruning is not None else None}
    log(f"done: test acc {metrics.get('test_acc')}, tuned {metrics['tuned_params']:,} params "
        f"({metrics['tuned_percent']:.3f}% of the backbone), {metrics['total_seconds']:.0f}s")
    return {"artifact": artifact, "kind": kind, "report": report, "result": res}
