"""Tiny deterministic backbones and prompt sets shared by the test suites."""

from __future__ import annotations

import torch

import promptserve as ps

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=10)


def tiny_backbone(seed: int = 0, **overrides) -> ps.Backbone:
    torch.manual_seed(seed)
    return ps.Backbone.from_timm("vit_tiny_patch16_224", **{**TINY, **overrides})


def random_prompt_set(bb: ps.Backbone, visual: list[int] | int = 3, kv: list[int] | int = 2,
                      classes: int = 5, deep: bool = True, shared: bool = True, seed: int = 0,
                      scale: float = 0.5) -> ps.PromptSet:
    """A valid prompt set with the given per-layer lengths (0 = none at that layer)."""
    g = torch.Generator().manual_seed(seed)
    L, D, H, d = bb.num_layers, bb.embed_dim, bb.num_heads, bb.head_dim
    visual = [visual] * L if isinstance(visual, int) else visual
    kv = [kv] * L if isinstance(kv, int) else kv
    tensors = {"head.weight": torch.randn(classes, D, generator=g) * 0.1,
               "head.bias": torch.randn(classes, generator=g)}
    for i in range(L):
        if visual[i] and (deep or i == 0):
            tensors[f"visual.{i}"] = torch.randn(visual[i], D, generator=g) * scale
        if kv[i]:
            if shared:
                tensors[f"kv.{i}"] = torch.randn(H, kv[i], d, generator=g) * scale
            else:
                tensors[f"key.{i}"] = torch.randn(H, kv[i], d, generator=g) * scale
                tensors[f"value.{i}"] = torch.randn(H, kv[i], d, generator=g) * scale
    return ps.PromptSet(tensors, backbone_fingerprint=bb.fingerprint, backbone=bb.spec,
                        labels=[f"c{j}" for j in range(classes)], config={"deep": deep}, method="e2vpt")


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
