"""PromptConfig: the shape of one task's prompts, validated at construction.

Saved as JSON in every prompt set's `config` metadata, so an artifact says how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

POOLING = ("token", "avg")
INIT = ("he_uniform", "xavier_uniform", "vpt_uniform", "normal", "zeros")


class ConfigError(ValueError):
    pass


def _per_layer(value: int | list[int] | tuple[int, ...], num_layers: int | None, what: str) -> list[int] | int:
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what}={value}: use a count >= 0 (0 turns these prompts off)")
        return value
    values = list(value)
    if any((not isinstance(v, int)) or v < 0 for v in values):
        raise ConfigError(f"{what}={values}: every per-layer count must be an int >= 0")
    if num_layers is not None and len(values) != num_layers:
        raise ConfigError(f"{what} has {len(values)} entries for a {num_layers}-layer backbone: give one per layer")
    return values


@dataclass
class PromptConfig:
    """visual_tokens / kv_tokens: one count for every layer, or a list with one count per layer.

    deep: visual prompts replaced before every layer (VPT-deep); False: only before layer 0 (shallow).
    shared_kv: one tensor serves as both key and value prompts (the paper's default).
    pooling: 'token' (CLS) or 'avg' (mean of patch tokens, for backbones without CLS).
    """

    visual_tokens: int | list[int] = 10
    kv_tokens: int | list[int] = 10
    deep: bool = True
    shared_kv: bool = True
    pooling: Literal["token", "avg"] = "token"
    visual_init: str = "vpt_uniform"
    kv_init: str = "he_uniform"
    num_layers: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"num_layers={self.num_layers}: a backbone has at least one layer")
        self.visual_tokens = _per_layer(self.visual_tokens, self.num_layers, "visual_tokens")
        self.kv_tokens = _per_layer(self.kv_tokens, self.num_layers, "kv_tokens")
        if self.pooling not in POOLING:
            raise ConfigError(f"pooling={self.pooling!r}: choose one of {POOLING}")
        for name in ("visual_init", "kv_init"):
            if getattr(self, name) not in INIT:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {INIT}")
        if not self.deep and isinstance(self.visual_tokens, list) and any(self.visual_tokens[1:]):
            raise ConfigError("a shallow config (deep=False) has visual prompts before layer 0 only: "
                              "set visual_tokens to an int or zeros after the first entry")

    def visual_at(self, layer: int) -> int:
        if not self.deep and layer > 0:
            return 0
        return self.visual_tokens if isinstance(self.visual_tokens, int) else self.visual_tokens[layer]

    def kv_at(self, layer: int) -> int:
        return self.kv_tokens if isinstance(self.kv_tokens, int) else self.kv_tokens[layer]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
