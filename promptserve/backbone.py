"""Backbone: a frozen, eval-mode timm VisionTransformer, its dims, data config and fingerprint.

The fingerprint is a hash of the frozen weights and the shape-changing config: a prompt set trained on
other weights is refused rather than served as garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

# timm kwargs that change the model's shapes or math; they identify the backbone next to its weights
SHAPE_KWARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "class_token", "reg_tokens", "global_pool", "no_embed_class", "pre_norm", "fc_norm",
                "num_classes", "qk_norm", "init_values")


class BackboneError(ValueError):
    """A model promptserve cannot prompt; the message says why and what would work."""


@dataclass(frozen=True)
class DataConfig:
    input_size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class Backbone:
    """Wrap a timm ViT; all parameters frozen (requires_grad False) and the model in eval mode."""

    def __init__(self, model: nn.Module, name: str, timm_kwargs: dict | None = None):
        from timm.models.vision_transformer import Attention, Block, VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise BackboneError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; promptserve "
                                "prompts ViTs only for now (e.g. vit_tiny_patch16_224, vit_base_patch16_224)")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise BackboneError(f"{name}: block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; "
                                    "only timm's standard Block/Attention are supported")
            if blk.attn.gate is not None:
                raise BackboneError(f"{name}: gated attention is not supported")
        if model.attn_pool is not None:
            raise BackboneError(f"{name}: attention-pool heads (global_pool='map') are not supported")
        if getattr(model, "dynamic_img_size", False):
            raise BackboneError(f"{name}: dynamic_img_size is not supported; fix the input size")
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.timm_kwargs = dict(timm_kwargs or {})

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, name: str, pretrained: bool = False, weights: str | Path | None = None,
                  **timm_kwargs) -> Backbone:
        """`weights`: a local .safetensors or .pth state dict; `pretrained=True` uses timm's hub download
        (needs a network). With neither, the weights are timm's random init (useful for speed tests)."""
        import timm

        model = timm.create_model(name, pretrained=pretrained and weights is None, **timm_kwargs)
        if weights is not None:
            model.load_state_dict(_read_state_dict(Path(weights)))
        return cls(model, name, timm_kwargs)

    @classmethod
    def from_file(cls, weights: str | Path) -> Backbone:
        """A weights file written by `promptserve pretrain`: its metadata names the timm model and kwargs."""
        from safetensors import safe_open

        if not Path(weights).is_file():
            raise BackboneError(f"backbone weights file {weights} does not exist")
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
        if "timm_name" not in meta:
            raise BackboneError(f"{weights} has no 'timm_name' metadata: use Backbone.from_timm(name, weights=...)")
        return cls.from_timm(meta["timm_name"], weights=weights, **json.loads(meta.get("timm_kwargs", "{}")))

    # ---- dims ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def num_heads(self) -> int:
        return self.model.blocks[0].attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.model.blocks[0].attn.head_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.model.num_prefix_tokens

    @property
    def num_patches(self) -> int:
        return self.model.patch_embed.num_patches

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @cached_property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @cached_property
    def data_config(self) -> DataConfig:
        import timm.data

        cfg = timm.data.resolve_model_data_config(self.model)
        # timm's pretrained_cfg keeps the original input size (224) when img_size is overridden: the
        # patch embedding knows the size the model actually takes
        size = self.model.patch_embed.img_size[0]
        return DataConfig(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))

    @cached_property
    def spec(self) -> str:
        """The `backbone` metadata string: timm name and the kwargs that change shapes."""
        kwargs = {k: v for k, v in sorted(self.timm_kwargs.items()) if k in SHAPE_KWARGS}
        return json.dumps({"name": self.name, **kwargs}, sort_keys=True)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the shape config and every frozen tensor (name, dtype, shape, float32 bytes)."""
        h = hashlib.sha256(self.spec.encode())
        for key, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{key}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def own_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's own classifier (C, D), (C,), e.g. to check prompted == plain timm logits."""
        head = self.model.head
        if not isinstance(head, nn.Linear):
            raise BackboneError(f"{self.name} has no linear classifier head (num_classes=0?)")
        return head.weight.detach().clone(), head.bias.detach().clone()


def load_backbone(spec: str, weights: str | Path | None = None, **timm_kwargs) -> Backbone:
    """The one way CLIs and the server turn a --backbone value into a Backbone: a weights file written by
    `promptserve pretrain` (its metadata names the model), or a timm model name (+ optional weights)."""
    if spec.endswith((".safetensors", ".pth", ".pt", ".bin")) or Path(spec).is_file():
        return Backbone.from_file(spec)
    return Backbone.from_timm(spec, weights=weights, **timm_kwargs)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise BackboneError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
