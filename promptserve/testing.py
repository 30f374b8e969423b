"""Synthetic backbones, prompt sets and images, shipped in the package as timm ships its test models: the
tests, the benchmarks and the server's generated demo tasks build them here, one implementation each, with
what differs between callers (depth, input size, prompt lengths, labels) in the arguments.

Every factory is seeded locally (its own torch.Generator, or timm's init inside a forked RNG): the same
arguments give the same tensors in every process, and building one never moves the caller's global RNG.
Random weights are for shapes, parity and speed, never for predictions anyone should read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from promptserve.backbone import RANDOM_TINY_KWARGS, Backbone
from promptserve.config import PromptConfig
from promptserve.promptset import PromptSet

TINY_VIT = "vit_tiny_patch16_224"
# random-tiny's ViT with a third block, so per-layer prompt lengths can be ragged in the middle too;
# tiny_backbone(depth=2) has random-tiny's weights and fingerprint
TINY_KWARGS = {**RANDOM_TINY_KWARGS, "depth": 3}


def random_backbone(name: str, seed: int = 0, **timm_kwargs) -> Backbone:
    """timm's random init of `name` with `timm_kwargs`, seeded by `seed`. Its spec records no weights source
    (another process cannot rebuild it from an artifact): `load_backbone("random-tiny")` is the one that can."""
    with torch.random.fork_rng(devices=[]):  # timm's init draws from the global RNG: fork it, never reseed it
        torch.manual_seed(seed)
        return Backbone.from_timm(name, **timm_kwargs)


def tiny_backbone(seed: int = 0, **overrides) -> Backbone:
    """A small random ViT (TINY_KWARGS with `overrides`, e.g. depth=2 or img_size=16, patch_size=4): a real
    timm VisionTransformer in every respect but size, milliseconds per forward on a CPU."""
    return random_backbone(TINY_VIT, seed, **{**TINY_KWARGS, **overrides})


def random_prompt_set(backbone: Backbone, visual: int | Sequence[int] = 3, kv: int | Sequence[int] = 2, *,
                      classes: int | Sequence[str] = 5, seed: int = 0, deep: bool = True, shared: bool = True,
                      head: tuple[torch.Tensor, torch.Tensor] | None = None,
                      metrics: dict | None = None) -> PromptSet:
    """A valid, untrained prompt set for `backbone`, initialised with the paper's inits.

    visual, kv: tokens per layer, one count for every layer or a list with one count per layer (0: none at
    that layer); a shallow set (deep=False) keeps only layer 0's visual prompts. shared: one `kv.{i}` tensor
    per layer, else separate `key.{i}` and `value.{i}`. classes: a count (labels c0, c1, ...) or the labels.
    head: (weight (C, D), bias (C,)), default a fresh one drawn like nn.Linear's. No prompts: a `linear` set."""
    L, D, H, d = backbone.num_layers, backbone.embed_dim, backbone.num_heads, backbone.head_dim
    visual_counts = [visual] * L if isinstance(visual, int) else list(visual)
    kv_counts = [kv] * L if isinstance(kv, int) else list(kv)
    if not deep:
        visual_counts = visual_counts[:1] + [0] * (len(visual_counts) - 1)
    config = PromptConfig(visual_tokens=visual_counts, kv_tokens=kv_counts, deep=deep, shared_kv=shared,
                          num_layers=L, extra={"seed": seed, "generated_by": "promptserve.testing", "trained": False})
    labels = [f"c{j}" for j in range(classes)] if isinstance(classes, int) else list(classes)
    gen = torch.Generator().manual_seed(seed)
    # VPT's visual-prompt init: uniform +-sqrt(6 / (3 * patch^2 + D))
    visual_bound = math.sqrt(6.0 / (3 * backbone.patch_size ** 2 + D))
    # He (Kaiming) uniform for key/value prompts: fan-in is the head dim they are compared against
    kv_bound = math.sqrt(6.0 / d)
    tensors: dict[str, torch.Tensor] = {}
    for i in range(L):
        if visual_counts[i]:
            tensors[f"visual.{i}"] = _uniform((visual_counts[i], D), visual_bound, gen)
        if kv_counts[i]:
            for name in [f"kv.{i}"] if shared else [f"key.{i}", f"value.{i}"]:
                tensors[name] = _uniform((H, kv_counts[i], d), kv_bound, gen)
    if head is None:
        head_bound = 1 / math.sqrt(D)
        head = (_uniform((len(labels), D), head_bound, gen), _uniform((len(labels),), head_bound, gen))
    weight, bias = head
    tensors["head.weight"], tensors["head.bias"] = weight.float().contiguous(), bias.float().contiguous()
    method = "e2vpt" if any(visual_counts) or any(kv_counts) else "linear"
    return PromptSet(tensors=tensors, backbone_fingerprint=backbone.fingerprint, backbone=backbone.spec,
                     labels=labels, method=method, config=config, metrics=metrics or {})


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) standard-normal pixels: inputs as they are after normalisation."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound
