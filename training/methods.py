"""The trainable part of each method: prompt tensors + head (prompt methods), or a full copy (`full`).

`PromptParams` holds only what a prompt set stores; the frozen backbone is never one of its parameters,
so the optimizer cannot touch it. Its `prompt_batch` builds the `PromptBatch` that `PromptedViT.forward_batch`
(the server's forward) consumes, so training runs exactly the served computation.
"""

from __future__ import annotations

import copy
import json
import math
import re

import torch
from safetensors.torch import save as st_save
from torch import nn

from promptserve.backbone import Backbone
from promptserve.bank import PromptBatch
from promptserve.config import PromptConfig
from promptserve.promptset import PromptSet
from training.config import TrainConfigError


def _uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def init_prompts(kind: str, shape: tuple[int, ...], fan_in: int, fan_out: int, patch: int,
                 gen: torch.Generator) -> torch.Tensor:
    """VPT's visual init: U(+-sqrt(6 / (3 * patch^2 + D))); He uniform: U(+-sqrt(6 / fan_in))."""
    if kind == "vpt_uniform":
        return _uniform(shape, math.sqrt(6.0 / (3 * patch * patch + fan_in)), gen)
    if kind == "he_uniform":
        return _uniform(shape, math.sqrt(6.0 / fan_in), gen)
    if kind == "xavier_uniform":
        return _uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)), gen)
    if kind == "normal":
        return torch.randn(shape, generator=gen) * 0.02
    if kind == "zeros":
        return torch.zeros(shape)
    raise ValueError(f"unknown init {kind!r}")


def expand_segments(seg: torch.Tensor, dim: int, layout: str) -> torch.Tensor:
    """(M, R) per-segment values -> (M, D). contiguous: dims [r*D/R, (r+1)*D/R) form segment r (paper);
    interleaved: dim j belongs to segment j % R (the official code's 16-way split)."""
    m, r = seg.shape
    if dim % r:
        raise ValueError(f"embed dim {dim} does not split into {r} segments")
    return seg.repeat_interleave(dim // r, dim=1) if layout == "contiguous" else seg.repeat(1, dim // r)


class PromptParams(nn.Module):
    """visual {layer: (M_i, D)}, shared kv {layer: (H, P_i, d)} (or key/value), head (C, D) + (C,).

    with_masks: stage 1 of E2VPT. Token masks rho_i (M_i,) and segment masks (M_i, R), all ones, are
    multiplied into the visual prompts in the graph; they require grad (for dL/drho) but are plain
    tensors, not parameters, so the optimizer never moves them.
    seg_keep: after segment pruning, a fixed 0/1 (M_i, R) mask that keeps pruned segments at zero.
    prompt_dropout: dropout on the visual prompts in training mode only (`.train()`); the stored
    tensors and every evaluation use the prompts as they are.
    """

    def __init__(self, backbone: Backbone, num_classes: int, visual_tokens: dict[int, int], kv_tokens: dict[int, int],
                 deep: bool = True, shared_kv: bool = True, visual_init: str = "vpt_uniform",
                 kv_init: str = "he_uniform", seed: int = 0, with_masks: bool = False, segments: int = 8,
                 segment_layout: str = "contiguous", prompt_dropout: float = 0.0):
        super().__init__()
        self.prompt_dropout = prompt_dropout
        L, D, H, d = backbone.num_layers, backbone.embed_dim, backbone.num_heads, backbone.head_dim
        self.L, self.D, self.H, self.d = L, D, H, d
        self.deep, self.shared_kv, self.segments, self.segment_layout = deep, shared_kv, segments, segment_layout
        self.pooling = backbone.pooling
        gen = torch.Generator().manual_seed(seed)
        self.visual = nn.ParameterDict()
        self.key = nn.ParameterDict()
        self.value = nn.ParameterDict()
        for i in range(L):
            m = visual_tokens.get(i, 0)
            if m:
                self.visual[str(i)] = nn.Parameter(init_prompts(visual_init, (m, D), D, D, backbone.patch_size, gen))
            p = kv_tokens.get(i, 0)
            if p:
                for store in (self.key,) if shared_kv else (self.key, self.value):
                    # one (P, D) matrix per layer, split into heads like the real keys: (H, P, d)
                    t = init_prompts(kv_init, (p, D), D, p, backbone.patch_size, gen)
                    store[str(i)] = nn.Parameter(t.view(p, H, d).transpose(0, 1).contiguous())
        bound = 1 / math.sqrt(D)  # nn.Linear's default init, from our seeded generator
        self.head_weight = nn.Parameter(_uniform((num_classes, D), bound, gen))
        self.head_bias = nn.Parameter(_uniform((num_classes,), bound, gen))
        self.masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if with_masks:
            for k, v in self.visual.items():
                self.masks[int(k)] = (torch.ones(v.shape[0], requires_grad=True),
                                      torch.ones(v.shape[0], segments, requires_grad=True))
        self.seg_keep: dict[int, torch.Tensor] = {}
        self.eval()  # nn.Module starts in training mode; prompt dropout belongs inside fit() only

    # ---- forward pieces -------------------------------------------------------------------------
    def effective_visual(self, i: int) -> torch.Tensor:
        """(M_i, D): the prompt tokens as they enter layer i (masks applied)."""
        v = self.visual[str(i)]
        if i in self.masks:
            rho, seg = self.masks[i]
            v = v * rho[:, None] * expand_segments(seg, self.D, self.segment_layout)
        if i in self.seg_keep:
            v = v * expand_segments(self.seg_keep[i].to(v.dtype), self.D, self.segment_layout)
        return v

    def prompt_batch(self, batch_size: int) -> PromptBatch:
        visual = {int(k): self.effective_visual(int(k)) for k in self.visual}
        if self.training and self.prompt_dropout:
            # one dropout pattern per batch (the prompts are shared by its samples), as in the official code
            visual = {i: nn.functional.dropout(v, self.prompt_dropout) for i, v in visual.items()}
        key = {int(k): v for k, v in self.key.items()}
        value = None if self.shared_kv else {int(k): v for k, v in self.value.items()}
        return PromptBatch.for_one_task(batch_size, self.L, visual, key, value, self.head_weight, self.head_bias,
                                        deep=self.deep, pooling=self.pooling)

    def empty_tokens(self) -> dict[int, int]:
        """{layer: count} of visual tokens that are all zero as stored: a served set must have none."""
        with torch.no_grad():
            counts = {int(k): int((self.effective_visual(int(k)) == 0).all(dim=1).sum()) for k in self.visual}
        return {i: c for i, c in counts.items() if c}

    def visual_lengths(self) -> dict[int, int]:
        return {int(k): v.shape[0] for k, v in self.visual.items()}

    # ---- artifact -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """What the prompt set stores: hard-pruned visual prompts with pruned segments zeroed."""
        with torch.no_grad():
            out = {f"visual.{k}": self.effective_visual(int(k)).detach().float().clone() for k in self.visual}
            if self.shared_kv:
                out.update({f"kv.{k}": v.detach().float().clone() for k, v in self.key.items()})
            else:
                out.update({f"key.{k}": v.detach().float().clone() for k, v in self.key.items()})
                out.update({f"value.{k}": v.detach().float().clone() for k, v in self.value.items()})
            out["head.weight"] = self.head_weight.detach().float().clone()
            out["head.bias"] = self.head_bias.detach().float().clone()
        return out

    def to_prompt_set(self, backbone: Backbone, labels: list[str], method: str, config: PromptConfig,
                      metrics: dict | None = None, created: str = "") -> PromptSet:
        return PromptSet(tensors=self.tensors(), backbone_fingerprint=backbone.fingerprint, backbone=backbone.spec,
                         labels=list(labels), method=method, config=config, metrics=metrics or {}, created=created)


def build_prompt_params(backbone: Backbone, num_classes: int, cfg, **kw) -> PromptParams:
    """The PromptParams of cfg.method (linear: no prompts; vpt-shallow: layer 0 only)."""
    m, p, deep = cfg.prompt_lengths()
    L = backbone.num_layers
    visual = {0: m} if not deep else dict.fromkeys(range(L), m)
    kv = dict.fromkeys(range(L), p)
    return PromptParams(backbone, num_classes, visual, kv, deep=deep, shared_kv=cfg.shared_kv,
                        visual_init=cfg.visual_init, kv_init=cfg.kv_init, seed=cfg.seed, segments=cfg.segments,
                        segment_layout=cfg.segment_layout, prompt_dropout=cfg.prompt_dropout, **kw)


def prompt_config(params: PromptParams, cfg) -> PromptConfig:
    """The artifact's config: the prompts' actual per-layer lengths (after pruning) + the TrainConfig."""
    vis = params.visual_lengths()
    kv = {int(k): v.shape[1] for k, v in params.key.items()}
    return PromptConfig(visual_tokens=[vis.get(i, 0) for i in range(params.L)],
                        kv_tokens=[kv.get(i, 0) for i in range(params.L)], deep=params.deep,
                        shared_kv=params.shared_kv, pooling=params.pooling, visual_init=cfg.visual_init,
                        kv_init=cfg.kv_init, num_layers=params.L, extra={"train": cfg.to_dict()})


# ---- full fine-tuning ---------------------------------------------------------------------------------
def full_model(backbone: Backbone, num_classes: int, seed: int) -> nn.Module:
    """A trainable copy of the backbone with a fresh head; the shared frozen backbone stays untouched."""
    model = copy.deepcopy(backbone.model)
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    return model.requires_grad_(True).eval()  # eval: timm's ViT has no dropout here, keep BN-free semantics


def _classifier_ids(model: nn.Module) -> set[int]:
    """ids of the classifier's parameters (timm: one head, or a tuple of two on distilled DeiTs)."""
    heads = model.get_classifier()
    return {id(p) for h in (heads if isinstance(heads, tuple) else (heads,)) for p in h.parameters()}


def trainable_weights(model: nn.Module, pattern: str) -> list[str]:
    """Names of the backbone weights `pattern` finds (re.search; the classifier is not one of them). None found:
    a TrainConfigError showing what the names look like."""
    head = _classifier_ids(model)
    names = [n for n, p in model.named_parameters() if id(p) not in head]
    hits = [n for n in names if re.search(pattern, n)]
    if not hits:
        firsts: dict[str, str] = {}  # one name per top-level module, per sub-module of the first block
        for n in names:
            parts = n.split(".")
            if parts[0] != "blocks" or parts[1] == "0":
                firsts.setdefault(".".join(parts[:3] if parts[0] == "blocks" else parts[:1]), n)
        shown = ", ".join(firsts.values())
        raise TrainConfigError(f"--trainable '{pattern}' matches none of the backbone's weight names: they look "
                               f"like {shown} (blocks.1. ... for later blocks)")
    return hits


def freeze_all_but(model: nn.Module, pattern: str) -> int:
    """Only the weights `pattern` finds, and the classifier, keep requires_grad; returns how many numbers train."""
    keep, head = set(trainable_weights(model, pattern)), _classifier_ids(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep or id(p) in head)
    return sum(p.numel() for p in trainable_parameters(model))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: frozen weights stay out of it (no decay, no state)."""
    return [p for p in model.parameters() if p.requires_grad]


def full_artifact_bytes(model: nn.Module, backbone: Backbone, labels: list[str], config: dict, metrics: dict) -> bytes:
    """A full-model safetensors (fp16) that `Backbone.from_file` loads; metadata says it is not a prompt set."""
    kwargs = {**backbone.timm_kwargs, "num_classes": len(labels)}
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"timm_name": backbone.name, "timm_kwargs": json.dumps(kwargs), "labels": json.dumps(labels),
            "method": "full", "config": json.dumps(config, sort_keys=True),
            "metrics": json.dumps(metrics, sort_keys=True), "base_backbone_fingerprint": backbone.fingerprint}
    return st_save(state, metadata=meta)
