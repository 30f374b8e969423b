"""Turn the backbone setting into a frozen `Backbone`, with a message that says what to do when it can't.

A random backbone is only ever built when asked for by name (`random-tiny`): a server that silently
served random weights would answer confidently and wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from promptserve.backbone import Backbone, BackboneError

RANDOM_TINY = "random-tiny"
# small enough for fast CPU tests, a real ViT in every other respect
RANDOM_TINY_KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def random_tiny_backbone(seed: int = 0) -> Backbone:
    """The same weights (and fingerprint) in every process: replicas and tests agree on it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Backbone.from_timm("vit_tiny_patch16_224", **RANDOM_TINY_KWARGS)


def check_backbone_spec(spec: str, weights: str | None = None, pretrained: bool = False) -> None:
    """The cheap part of load_backbone's checks (no model built): lets `serve` fail before it binds."""
    if spec == RANDOM_TINY:
        return
    path = Path(spec)
    if path.suffix in WEIGHT_SUFFIXES and not path.exists():
        load_backbone(spec)  # raises the BackboneError that says what to do
    if not path.exists() and weights is None and not pretrained:
        load_backbone(spec, weights, pretrained)
    if weights is not None and not Path(weights).exists():
        raise BackboneError(f"backbone weights {weights} not found")


def load_backbone(spec: str, weights: str | None = None, pretrained: bool = False,
                  timm_kwargs: dict | None = None) -> Backbone:
    if spec == RANDOM_TINY:
        return random_tiny_backbone()
    path = Path(spec)
    if path.suffix in WEIGHT_SUFFIXES or path.exists():
        if not path.exists():
            raise BackboneError(
                f"backbone weights {spec} not found. Build the demo backbone with `make pretrain` (or "
                "`promptserve pretrain`), point PROMPTSERVE_BACKBONE / --backbone at a weights file, or use "
                f"--backbone {RANDOM_TINY} for a small seeded random ViT (tests and smoke runs only)")
        return Backbone.from_file(path)
    if weights is None and not pretrained:
        raise BackboneError(
            f"backbone {spec!r} is a timm model name without weights: give --backbone-weights FILE (or "
            "--backbone-pretrained to download timm's weights); random weights are never served implicitly")
    return Backbone.from_timm(spec, pretrained=pretrained, weights=weights, **(timm_kwargs or {}))


def backbone_labels(spec: str, backbone: Backbone) -> list[str]:
    """Class names of the backbone's own head: from the weights file's metadata when it has them."""
    path = Path(spec)
    if path.suffix == ".safetensors" and path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            labels = json.loads((f.metadata() or {}).get("labels", "null"))
        if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
            return labels
    n = backbone.model.num_classes
    return [f"class_{i}" for i in range(n)]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} asked for, but torch sees no CUDA device here: use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    out = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if device.type == "cpu" and out == torch.float16:
        # fp16 matmuls on CPU are slow or unsupported depending on the build; bf16 is the CPU half type
        raise BackboneError("float16 on CPU is not supported: use float32 or bfloat16")
    return out
