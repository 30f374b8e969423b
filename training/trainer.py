"""One `promptserve train` run: data -> plan -> hp search -> pruning choice -> seeds -> artifact + report.

Protocol (VTAB-1k, as the paper and the official E2VPT code): a class-balanced `train_size` subset with a
validation split held out of it (20%, at most 200; whole groups of near-twins with `--val-group`, see
training/data.py). Everything chosen from data is chosen on that split
with models trained on the rest:
- `--hp-search` (on for prompt methods): a 3 lr x 2 wd grid around the method's defaults, each point
  trained with a short schedule (`hp_epochs`, unpruned prompts for e2vpt) and scored on validation;
- `--search` (e2vpt): the pruning ratios, from stage-1 prompts hard-pruned.
The final configuration is then trained with `seeds` seeds. One seed: on train + val (`final_on_all`, the
VTAB-1k protocol), so nothing is held out and no validation accuracy is reported. Several seeds: val is
KEPT OUT of the final runs, because the saved artifact is the best seed on validation (never on test);
mean and sd over seeds of the test accuracy are reported either way. E2VPT seeds share one stage 1 (the
pruning masks are part of the chosen configuration) and differ in the rewound initialisation and order.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from promptserve.backbone import Backbone
from promptserve.promptset import PromptSet
from training.config import TrainConfig, TrainConfigError
from training.data import TaskData, load_task, merge
from training.imagefolder import ImageArray
from training.loop import accuracy_module, accuracy_prompt_set
from training.methods import full_artifact_bytes, full_model, trainable_parameters, trainable_weights
from training.progress import StepClock
from training.stages import (
    RunResult,
    Stage1,
    accuracy,
    binomial_sd,
    prompt_set,
    prune_at,
    rewind,
    run_method,
    search_pruning,
    stage1,
)

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


def setup_runtime(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)


def _steps(n: int, cfg: TrainConfig) -> int:
    return math.ceil(n / max(1, min(cfg.batch_size, n)))


def plan(cfg: TrainConfig, data: TaskData, final: ImageArray, log=logger.info) -> int:
    """Log what will run; returns the optimizer steps of the whole run (for the time estimate)."""
    s = data.summary()
    log(f"[plan] data: {s['train']} train / {s['val']} val / {s['test']} test images, {s['classes']} classes "
        f"({s['source']})")
    if data.test is None:
        log(f"warning: {s['source']} has no test/ split, so no test accuracy will be measured or stored: add "
            "test/<class>/ images the training never sees to learn what the server will answer")
    total = 0
    if cfg.hp_search:
        n = len(cfg.lr_grid) * len(cfg.wd_grid)
        total += n * cfg.hp_epochs * _steps(len(data.train), cfg)
        log(f"[plan] hp search: lr {cfg.lr_grid} x wd {cfg.wd_grid} = {n} runs of {cfg.hp_epochs} epochs on the "
            f"{len(data.train)} train images, each scored on the {len(data.val)} val images")
    stages = 2 if cfg.prunes else 1
    if cfg.prunes:
        s1_n = len(data.train) if cfg.search else len(final)
        total += cfg.epochs * _steps(s1_n, cfg)
        log(f"[plan] e2vpt: stage 1 ({cfg.epochs} epochs on {s1_n} images, importance {cfg.importance}), "
            + (f"pruning search over {len(cfg.token_grid) * len(cfg.segment_grid)} ratio pairs on val, "
               if cfg.search else f"pruning {cfg.token_prune} of tokens / {cfg.segment_prune} of segments, ")
            + "then rewinding per seed")
    total += cfg.seeds * cfg.epochs * _steps(len(final), cfg)
    where = "train + val" if len(final) > len(data.train) else "train (val kept out to pick the saved seed)" \
        if cfg.seeds > 1 and data.val is not None else "train"
    log(f"[plan] method {cfg.method}: {cfg.seeds} seed(s) x {cfg.epochs} epochs x {_steps(len(final), cfg)} steps "
        f"(batch {min(cfg.batch_size, len(final))}) on {len(final)} images ({where}); "
        f"{'stage 1 + rewind' if stages == 2 else 'one stage'}; {total:,} optimizer steps in all")
    return total


def tune_hparams(cfg: TrainConfig, backbone: Backbone, data: TaskData, log=logger.info,
                 clock: StepClock | None = None) -> tuple[TrainConfig, dict]:
    """The lr x wd grid: each point trained on train with a short schedule and scored on val."""
    rows = []
    short = dict(epochs=cfg.hp_epochs, warmup_epochs=cfg.warmup_epochs * cfg.hp_epochs / cfg.epochs)
    for lr in cfg.lr_grid:
        for wd in cfg.wd_grid:
            # e2vpt's grid points train visual + key-value prompts unpruned: the rates are for those tensors
            trial = replace(cfg, lr=lr, weight_decay=wd, hp_search=False, search=False, token_prune=0.0,
                            segment_prune=0.0, seeds=1, **short)
            t0 = time.time()
            res = run_method(trial, backbone, data.train, log=lambda *_: None, clock=clock)
            acc = accuracy(res, backbone, data.val, trial)
            rows.append({"lr": lr, "weight_decay": wd, "val_acc": acc, "seconds": round(time.time() - t0, 1)})
            log(f"[hp-search] lr {lr:g} wd {wd:g}: val acc {acc:.4f} ({rows[-1]['seconds']:.0f}s)")
    best = max(rows, key=lambda r: r["val_acc"])  # ties: the first in grid order
    sd = binomial_sd(best["val_acc"], len(data.val))
    close = sum(r["val_acc"] >= best["val_acc"] - sd for r in rows)
    log(f"[hp-search] chose lr {best['lr']:g} wd {best['weight_decay']:g} (val acc {best['val_acc']:.4f}; "
        f"{close} of {len(rows)} points within one binomial sd, {sd:.3f} on {len(data.val)} images)")
    summary = {"grid": rows, "epochs": cfg.hp_epochs, "chosen": {"lr": best["lr"], "weight_decay":
               best["weight_decay"]}, "best_val_acc": best["val_acc"], "binomial_sd": sd, "within_noise": close}
    return replace(cfg, lr=best["lr"], weight_decay=best["weight_decay"]), summary


def _final_data(cfg: TrainConfig, data: TaskData, log) -> tuple[ImageArray, bool]:
    """(the final runs' data, whether val is held out of it)."""
    if data.val is None:
        return data.train, False
    if cfg.seeds > 1:
        log(f"{cfg.seeds} seeds: the final runs train on the {len(data.train)} train images and keep the "
            f"{len(data.val)} val images out, to pick the saved seed on them")
        return data.train, True
    if cfg.final_on_all:
        if not cfg.tunes:
            log(f"no tuning asked: training on all {len(data.train) + len(data.val)} images (train + val)")
        return merge(data.train, data.val), False
    return data.train, True


def _evaluate(res: RunResult, backbone: Backbone, data: TaskData, cfg: TrainConfig, held_out: bool) -> dict:
    row = {"seed": cfg.seed, "val_acc": None, "test_acc": None}
    if held_out:
        row["val_acc"] = accuracy(res, backbone, data.val, cfg)
    if data.test is not None:
        row["test_acc"] = accuracy(res, backbone, data.test, cfg)
    return row


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def train_task(cfg: TrainConfig, data: str | TaskData, backbone: Backbone, log=logger.info) -> dict:
    """Run the protocol; returns {"artifact": bytes, "kind": "prompt_set"|"full", "report": {...}, "result"}."""
    setup_runtime(cfg)
    t0 = time.time()
    if cfg.trainable is not None:
        trainable_weights(backbone.model, cfg.trainable)  # a pattern that finds nothing fails before the data loads
    if isinstance(data, str):
        dc = backbone.data_config
        data = load_task(data, dc.input_size, dc.interpolation, cfg.train_size, cfg.val_fraction, cfg.val_max,
                         cfg.seed, log=log, use_cache=cfg.cache, progress=cfg.progress, val_group=cfg.val_group)
    if cfg.tunes and data.val is None:
        raise TrainConfigError("--hp-search / --search choose on a validation split, and there is none: set "
                               "--val-fraction > 0 (or add a val/ split), or pass --no-hp-search")
    final, held_out = _final_data(cfg, data, log)
    clock = StepClock(plan(cfg, data, final, log), log)
    report: dict = {"hp_search": None, "search": None, "importance": None, "pruning": None, "history": []}
    if cfg.hp_search:
        cfg, report["hp_search"] = tune_hparams(cfg, backbone, data, log, clock)
    s1: Stage1 | None = None
    if cfg.prunes:
        s1 = stage1(cfg, backbone, data.train if cfg.search else final, log, clock)
        report["history"] += s1.history
        report["importance"] = s1.importance_report()
        if cfg.search:
            cfg, report["search"] = search_pruning(s1, cfg, backbone, data.val, log)
    pruning = prune_at(s1, cfg) if s1 is not None else None

    runs: list[tuple[RunResult, dict]] = []
    for k in range(cfg.seeds):
        scfg = replace(cfg, seed=cfg.seed + k)
        setup_runtime(scfg)
        if cfg.seeds > 1:
            log(f"[seeds] seed {scfg.seed} ({k + 1} of {cfg.seeds})")
        res = rewind(s1, pruning, scfg, backbone, final, log, clock) if s1 else run_method(scfg, backbone, final,
                                                                                           log, clock)
        row = _evaluate(res, backbone, data, scfg, held_out)
        runs.append((res, row))
        if cfg.seeds > 1:
            log(f"[seeds] seed {scfg.seed}: val acc {row['val_acc']}, test acc {row['test_acc']}")
    best_res, best_row = runs[0]
    if held_out and cfg.seeds > 1:
        best_res, best_row = max(runs, key=lambda r: r[1]["val_acc"])  # ties: the first seed
        log(f"[seeds] saving seed {best_row['seed']}: the best on validation ({best_row['val_acc']:.4f})")
    report["history"] += best_res.history
    cfg = replace(best_res.cfg, seeds=cfg.seeds)
    if pruning is not None:
        report["pruning"] = pruning.summary(s1.params.visual_lengths())
    return _finish(cfg, backbone, data, final, best_res, best_row, [r for _, r in runs], report, t0, log)


def _finish(cfg, backbone, data, final, res, row, seed_rows, report, t0, log) -> dict:
    labels = data.classes
    mean, sd = _mean_sd([r["test_acc"] for r in seed_rows])
    metrics = {"train_images": len(final), "train_seconds": round(time.time() - t0, 1),
               "backbone_params": backbone.num_params, "val_acc": row["val_acc"], "test_acc": row["test_acc"],
               "seed": row["seed"], "seeds": len(seed_rows), "test_acc_mean": mean, "test_acc_sd": sd}
    if report["hp_search"]:
        metrics["hp_search_best_val_acc"] = report["hp_search"]["best_val_acc"]
    if report["search"]:
        metrics["search_val_acc"] = report["search"]["chosen"]["val_acc"]
        metrics["stage1_val_acc"] = report["search"]["stage1_val_acc"]
    if res.params is not None:
        empty = res.params.empty_tokens()
        if empty:  # prune() removes such tokens; this guards the invariant against any future path
            raise RuntimeError(f"all-zero visual prompt tokens {empty} would be served: a pruning bug")
        ps = PromptSet.load(prompt_set(res.params, backbone, labels, cfg).to_bytes())
        metrics.update(tuned_params=ps.num_params(), prompt_params=ps.num_prompt_params(),
                       tuned_percent=100 * ps.num_params() / backbone.num_params)
        if report["pruning"]:
            metrics.update({k: v for k, v in report["pruning"].items() if k not in ("kept", "segments_kept")})
        metrics["visual_tokens"] = (report["pruning"]["visual_tokens_before"] if report["pruning"]
                                    else sum(res.params.visual_lengths().values()))  # before any pruning
        metrics["prompt_set_bytes"] = len(prompt_set(res.params, backbone, labels, cfg, metrics).to_bytes())
        artifact, kind = prompt_set(res.params, backbone, labels, cfg, metrics).to_bytes(), "prompt_set"
        check = accuracy_prompt_set(backbone, PromptSet.load(artifact), data.test.images, data.test.labels,
                                    cfg.eval_batch_size, progress=cfg.progress) if data.test is not None else None
    else:
        from safetensors.torch import load as st_load

        n = sum(p.numel() for p in trainable_parameters(res.model))
        metrics.update(tuned_params=n, tuned_percent=100 * n / backbone.num_params)
        blob = full_artifact_bytes(res.model, backbone, labels, {"train": cfg.to_dict()}, metrics)
        model = full_model(backbone, len(labels), cfg.seed)
        model.load_state_dict({k: v.float() for k, v in st_load(blob).items()})  # the fp16 artifact, as loaded
        check = accuracy_module(model, backbone.data_config, data.test.images, data.test.labels,
                                progress=cfg.progress) if data.test is not None else None
        metrics["test_acc"] = check  # fp16 rounding can move a prediction: report what the artifact gives
        artifact, kind = full_artifact_bytes(res.model, backbone, labels, {"train": cfg.to_dict()}, metrics), "full"
        metrics["artifact_bytes"] = len(artifact)
    if res.params is not None and check is not None and abs(check - metrics["test_acc"]) > 1e-9:
        raise RuntimeError(f"the saved prompt set scores {check} on test, the trained one {metrics['test_acc']}")
    metrics["total_seconds"] = round(time.time() - t0, 1)
    report.update({"method": cfg.method, "config": cfg.to_dict(), "data": data.summary(), "labels": labels,
                   "backbone": backbone.spec, "backbone_fingerprint": backbone.fingerprint, "metrics": metrics,
                   "seeds": {"runs": seed_rows, "saved_seed": row["seed"], "test_acc_mean": mean,
                             "test_acc_sd": sd, "final_data": "train + val" if len(final) > len(data.train)
                             else "train", "selected_on": "val" if len(seed_rows) > 1 and row["val_acc"]
                             is not None else None}})
    spread = f" (mean {mean:.4f} +- {sd:.4f} over {len(seed_rows)} seeds)" if len(seed_rows) > 1 and mean else ""
    log(f"done: test acc {metrics.get('test_acc')}{spread}, tuned {metrics['tuned_params']:,} params "
        f"({metrics['tuned_percent']:.3f}% of the backbone), {metrics['total_seconds']:.0f}s")
    return {"artifact": artifact, "kind": kind, "report": report, "result": res}
