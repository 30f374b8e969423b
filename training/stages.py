"""The training stages of each method, on data the caller chooses (training/trainer.py runs the protocol).

- `run_method`: linear (head on cached features), full (a trainable copy), vpt-* / unpruned e2vpt.
- E2VPT with pruning: `stage1` (masks in the graph, importance scores) -> `search_pruning` (optional:
  ratios chosen on the validation split) -> `rewind` (kept prompts re-initialised and retrained, pruned
  tokens removed from the sequence). See training/e2vpt.py for the rules.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch

from promptserve.backbone import Backbone
from promptserve.promptset import PromptSet
from training.config import TrainConfig
from training.e2vpt import Importance, Pruning, apply_pruning, one_pass_importance, prune
from training.imagefolder import ImageArray
from training.loop import ModuleForward, PromptForward, accuracy_module, accuracy_prompt_set, features, fit
from training.methods import (
    PromptParams,
    build_prompt_params,
    freeze_all_but,
    full_model,
    prompt_config,
    trainable_parameters,
)
from training.progress import StepClock, bar

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging


@dataclass
class RunResult:
    """params (prompt methods) or model (full), with what report.json needs."""

    cfg: TrainConfig
    params: PromptParams | None = None
    model: torch.nn.Module | None = None
    history: list[dict] = field(default_factory=list)


@dataclass
class Stage1:
    """E2VPT stage 1: trained masked params and their importance scores."""

    params: PromptParams
    token: dict[int, torch.Tensor]
    segment: dict[int, torch.Tensor]
    batches: int
    history: list[dict]
    rule: str

    def importance_report(self) -> dict:
        return {"rule": self.rule, "batches": self.batches,
                "token": {str(i): t.tolist() for i, t in self.token.items()},
                "segment": {str(i): s.tolist() for i, s in self.segment.items()}}


def prompt_set(params: PromptParams, backbone: Backbone, labels, cfg: TrainConfig, metrics=None) -> PromptSet:
    return params.to_prompt_set(backbone, labels, cfg.method, prompt_config(params, cfg), metrics)


def accuracy(res: RunResult, backbone: Backbone, split: ImageArray, cfg: TrainConfig) -> float:
    """Accuracy as served: a prompt set goes through its stored bytes, a full model through its forward."""
    if res.params is not None:
        ps = PromptSet.load(prompt_set(res.params, backbone, split.classes, cfg).to_bytes())
        return accuracy_prompt_set(backbone, ps, split.images, split.labels, cfg.eval_batch_size)
    return accuracy_module(res.model, backbone.data_config, split.images, split.labels, cfg.eval_batch_size)


def binomial_sd(p: float, n: int) -> float:
    """One standard deviation of an accuracy p measured on n images: what a split can resolve."""
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def run_method(cfg: TrainConfig, backbone: Backbone, data: ImageArray, log=logger.info,
               clock: StepClock | None = None) -> RunResult:
    """Train cfg.method without pruning on `data` (e2vpt here = visual + key-value prompts, unpruned)."""
    C = len(data.classes)
    res = RunResult(cfg)
    if cfg.method == "full":
        model = full_model(backbone, C, cfg.seed)
        if cfg.trainable is None:
            log(f"method full: a trainable copy of all {backbone.num_params:,} backbone weights plus a new head "
                "(the shared backbone itself stays untouched)")
        else:
            n = freeze_all_but(model, cfg.trainable)
            log(f"method full, --trainable '{cfg.trainable}': a copy of the backbone plus a new head, of which "
                f"{n:,} of {sum(p.numel() for p in model.parameters()):,} weights train (the head included); the "
                "rest keep the backbone's values")
        res.history = fit(ModuleForward(model, backbone.data_config), trainable_parameters(model), data.images,
                          data.labels, cfg, desc="full", log=log, clock=clock)
        res.model = model
        return res
    log(f"method {cfg.method}: the backbone's {backbone.num_params:,} weights are frozen and never enter the "
        "optimizer; only the prompts and the head train")
    params = build_prompt_params(backbone, C, cfg)
    if cfg.method == "linear":
        feats = features(backbone, data.images, cfg.eval_batch_size)  # (N, D), computed once

        def head(x):
            return torch.nn.functional.linear(x, params.head_weight, params.head_bias)

        if cfg.augment:
            log("note: linear probing trains on cached features; --augment is ignored for linear")
        res.history = fit(head, [params.head_weight, params.head_bias], feats, data.labels, cfg,
                          prepare=lambda inputs, idx: inputs[idx], desc="linear", log=log, clock=clock)
    else:
        res.history = fit(PromptForward(backbone, params), list(params.parameters()), data.images, data.labels,
                          cfg, desc=cfg.method, log=log, clock=clock)
    res.params = params
    return res


def stage1(cfg: TrainConfig, backbone: Backbone, data: ImageArray, log=logger.info,
           clock: StepClock | None = None) -> Stage1:
    """Train visual + key-value prompts + head with masks in the graph; score every mask."""
    log(f"method e2vpt: the backbone's {backbone.num_params:,} weights are frozen and never enter the optimizer; "
        f"stage 1 trains prompts + head with token/segment masks (importance: {cfg.importance})")
    params = build_prompt_params(backbone, len(data.classes), cfg, with_masks=True)
    forward = PromptForward(backbone, params)
    scorer = Importance(params) if cfg.importance == "abs" else None
    history = fit(forward, list(params.parameters()), data.images, data.labels, cfg, after_backward=scorer,
                  desc="stage1", log=log, clock=clock)
    if scorer is None:  # the official rule: one extra pass after stage 1, signed mean gradient
        scorer = one_pass_importance(forward, params, data.images, data.labels, cfg.batch_size, cfg.progress)
    token, segment = scorer.scores()
    return Stage1(params, token, segment, scorer.batches, history, cfg.importance)


def prune_at(s1: Stage1, cfg: TrainConfig) -> Pruning:
    return prune(s1.token, s1.segment, cfg.token_prune, cfg.segment_prune, cfg.segment_rule, cfg.min_segments_kept)


def search_pruning(s1: Stage1, cfg: TrainConfig, backbone: Backbone, val: ImageArray,
                   log=logger.info) -> tuple[TrainConfig, dict]:
    """Score each (token, segment) ratio pair: stage-1 prompts hard-pruned (no retraining), on val. Keeps
    the most pruning within `search_tolerance` of the best, and says which candidates the split cannot
    tell apart (within one binomial sd of the best)."""
    unpruned = RunResult(cfg, apply_pruning(s1.params, prune(s1.token, s1.segment, 0.0, 0.0)))
    stage1_acc = accuracy(unpruned, backbone, val, cfg)
    rows = []
    grid = [(tp, sp) for tp in cfg.token_grid for sp in cfg.segment_grid]
    for tp, sp in bar(grid, desc="pruning search", enabled=cfg.progress):
        trial = replace(cfg, token_prune=tp, segment_prune=sp)
        cand = RunResult(trial, apply_pruning(s1.params, prune_at(s1, trial)))
        acc = accuracy(cand, backbone, val, cfg)
        rows.append({"token_prune": tp, "segment_prune": sp, "val_acc": acc})
        log(f"[search] token {tp:.2f} segment {sp:.2f}: val acc {acc:.4f} (unpruned stage 1 {stage1_acc:.4f})")
    best = max(r["val_acc"] for r in rows)
    sd = binomial_sd(best, len(val))
    ok = [r for r in rows if r["val_acc"] >= best - cfg.search_tolerance]
    pick = max(ok, key=lambda r: (r["token_prune"], r["segment_prune"]))
    noise = [r for r in rows if r["val_acc"] >= best - sd]
    log(f"[search] chose token_prune={pick['token_prune']} segment_prune={pick['segment_prune']} (val acc "
        f"{pick['val_acc']:.4f}, best {best:.4f}, tolerance {cfg.search_tolerance})")
    if len(noise) > 1:
        log(f"[search] {len(noise)} of {len(rows)} candidates are within one binomial sd ({sd:.3f} on {len(val)} "
            "validation images) of the best: the split cannot tell them apart")
    summary = {"candidates": rows, "stage1_val_acc": stage1_acc, "best_val_acc": best, "val_images": len(val),
               "binomial_sd": sd, "within_noise": len(noise), "tolerance": cfg.search_tolerance,
               "chosen": {"token_prune": pick["token_prune"], "segment_prune": pick["segment_prune"],
                          "val_acc": pick["val_acc"]}}
    return replace(cfg, token_prune=pick["token_prune"], segment_prune=pick["segment_prune"]), summary


def rewind(s1: Stage1, pruning: Pruning, cfg: TrainConfig, backbone: Backbone, data: ImageArray, log=logger.info,
           clock: StepClock | None = None) -> RunResult:
    """Re-initialise the kept prompts, key-value prompts and head (the seeded init of cfg.seed: for stage 1's
    seed exactly stage 1's initial values) and retrain them with the masks fixed."""
    fresh = build_prompt_params(backbone, len(data.classes), cfg, with_masks=True)  # seeded: for stage 1's seed
    rewound = apply_pruning(s1.params, pruning, values=fresh.state_dict())  # these are stage 1's initial values
    history = fit(PromptForward(backbone, rewound), list(rewound.parameters()), data.images, data.labels, cfg,
                  desc="rewind", salt=1, log=log, clock=clock)
    return RunResult(cfg, rewound, history=history)
