"""The server's backbone: its settings resolved by the core loader's rules (promptserve.backbone, the one
loader every command shares), the class names of its own head, and the device and dtype it runs in.

A random backbone is only ever built when asked for (`random-tiny` or backbone_random_init): a server that
silently served random weights would answer confidently and wrongly.
"""

from __future__ import annotations

import json

import torch

from promptserve.backbone import PROJECT_FILE, Backbone, BackboneError, BackboneSpec, resolve_backbone
from server.settings import ServerSettings


def backbone_spec(settings: ServerSettings) -> BackboneSpec:
    """The settings' backbone resolved (no model built yet): `serve` calls it to fail before it binds a port."""
    return resolve_backbone(settings.backbone, weights=settings.backbone_weights,
                            pretrained=settings.backbone_pretrained, random_init=settings.backbone_random_init,
                            timm_kwargs=settings.backbone_kwargs)


def backbone_labels(backbone: Backbone) -> list[str]:
    """Class names of the backbone's own head: from a project backbone file's metadata when it has them."""
    if backbone.source.source == PROJECT_FILE:
        from safetensors import safe_open

        with safe_open(backbone.source.path, "pt") as f:
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
    if dtype == "auto":
        raise ValueError("dtype auto is decided at start-up (server.precision) before the engine is built")
    out = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if device.type == "cpu" and out == torch.float16:
        # fp16 matmuls on CPU are slow or unsupported depending on the build; bf16 is the CPU half type
        raise BackboneError("float16 on CPU is not supported: use float32 or bfloat16")
    return out
