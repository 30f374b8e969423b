"""PromptConfig: the shape of one task's prompts, validated at construction.

The one config class of a prompt set: the trainer builds it, `PromptSet.config` holds it, and the file's
`config` metadata is its JSON (`to_dict`), parsed and validated again on every load (`from_dict`), so an
artifact says how it was made and a malformed one is refused before it is served. Keys the core does not
know (the trainer's `train` settings, a generator's notes) travel in `extra` and sit at the top level of
the JSON beside the known fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

POOLING = ("token", "avg")
INIT = ("he_uniform", "xavier_uniform", "vpt_uniform", "normal", "zeros")


class ConfigError(ValueError):
    pass


def _per_layer(value: Any, num_layers: int | None, what: str) -> list[int] | int | None:
    if value is None:
        return None
    if _is_int(value):
        if value < 0:
            raise ConfigError(f"{what}={value}: use a count >= 0 (0 turns these prompts off)")
        return value
    if not isinstance(value, list | tuple) or not all(_is_int(v) and v >= 0 for v in value):
        raise ConfigError(f"{what}={str(value)[:60]}: give one count >= 0, or a list with one count per layer")
    values = list(value)
    if num_layers is not None and len(values) != num_layers:
        raise ConfigError(f"{what} has {len(values)} entries for a {num_layers}-layer backbone: give one per layer")
    return values


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class PromptConfig:
    """visual_tokens / kv_tokens: one count for every layer, or a list with one count per layer (the
    trainer writes lists: the lengths left after pruning); None: not stated (a hand-written file). The
    tensors are what is served; `validate` of a prompt set checks that per-layer lists agree with them.

    deep: visual prompts replaced before every layer (VPT-deep); False: only before layer 0 (shallow).
    shared_kv: one tensor serves as both key and value prompts (the paper's default).
    pooling: 'token' (CLS) or 'avg' (mean of patch tokens); None: whatever the backbone pools with.
    """

    visual_tokens: int | list[int] | None = None
    kv_tokens: int | list[int] | None = None
    deep: bool = True
    shared_kv: bool = True
    pooling: Literal["token", "avg"] | None = None
    visual_init: str = "vpt_uniform"
    kv_init: str = "he_uniform"
    num_layers: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.num_layers is not None and (not _is_int(self.num_layers) or self.num_layers < 1):
            raise ConfigError(f"num_layers={self.num_layers!r}: a backbone has at least one layer")
        self.visual_tokens = _per_layer(self.visual_tokens, self.num_layers, "visual_tokens")
        self.kv_tokens = _per_layer(self.kv_tokens, self.num_layers, "kv_tokens")
        for name in ("deep", "shared_kv"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: use true or false")
        if self.pooling is not None and self.pooling not in POOLING:
            raise ConfigError(f"pooling={self.pooling!r}: choose one of {POOLING} (or leave it out for the "
                              "backbone's own)")
        for name in ("visual_init", "kv_init"):
            if getattr(self, name) not in INIT:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {INIT}")
        if not self.deep and isinstance(self.visual_tokens, list) and any(self.visual_tokens[1:]):
            raise ConfigError("a shallow config (deep=False) has visual prompts before layer 0 only: "
                              "set visual_tokens to an int or zeros after the first entry")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra={str(self.extra)[:40]}: a dict of further settings")
        shadowed = sorted(set(self.extra) & _FIELDS)
        if shadowed:
            raise ConfigError(f"extra repeats the config fields {shadowed}: set them as fields")

    def visual_at(self, layer: int) -> int:
        if not self.deep and layer > 0:
            return 0
        return _count_at(self.visual_tokens, layer, "visual_tokens")

    def kv_at(self, layer: int) -> int:
        return _count_at(self.kv_tokens, layer, "kv_tokens")

    def to_dict(self) -> dict:
        """The file's JSON: the fields, then `extra`'s keys beside them."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        known["visual_tokens"] = _copy(known["visual_tokens"])
        known["kv_tokens"] = _copy(known["kv_tokens"])
        return {**known, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> PromptConfig:
        """Inverse of `to_dict`: the keys that are not fields go to `extra`."""
        return cls(**{k: v for k, v in d.items() if k in _FIELDS},
                   extra={k: v for k, v in d.items() if k not in _FIELDS})


def _count_at(counts: int | list[int] | None, layer: int, what: str) -> int:
    if counts is None:
        raise ConfigError(f"{what} is not stated in this config: read the lengths from the tensors")
    return counts if isinstance(counts, int) else counts[layer]


def _copy(value: int | list[int] | None) -> int | list[int] | None:
    return list(value) if isinstance(value, list) else value


_FIELDS = frozenset(f.name for f in fields(PromptConfig)) - {"extra"}  # the keys the JSON holds as fields
