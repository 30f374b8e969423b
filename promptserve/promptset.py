"""PromptSet: one task's E2VPT prompts + linear head, stored as a safetensors file (never pickle).

Tensors (a missing layer means "no prompts there"):
    visual.{i}  (M_i, D)     visual prompts of layer i, hard-pruned; segment-pruned entries are 0
    kv.{i}      (H, P_i, d)  shared key/value prompts of layer i   (or key.{i} and value.{i})
    head.weight (C, D), head.bias (C)
String metadata: format, backbone, backbone_fingerprint, labels, method, config, metrics, created.
The version of a prompt set is the sha256 of its bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from promptserve.config import PromptConfig
from promptserve.fileformat import (
    FORMAT,
    FingerprintError,
    FormatError,
    MissingTensorError,
    NonFiniteError,
    PromptSetError,  # noqa: F401  (the server and tests import it from here; it belongs to the file format)
    ShapeError,
    canonical_bytes,
    check_head,
    check_tensor,
    parse_config,
    parse_header,
)
from promptserve.files import write_atomic

if TYPE_CHECKING:
    from promptserve.backbone import Backbone

# the dtypes a file may hold, by the names safetensors gives them in a header
FILE_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


@dataclass
class PromptSet:
    """Its file's bytes and version are made once, when first asked for (or kept from the file it was loaded
    from); assigning a field makes them anew. Tensors are held as given: change them by assigning `tensors`."""

    tensors: dict[str, torch.Tensor]
    backbone_fingerprint: str = ""
    backbone: str = ""
    labels: list[str] = field(default_factory=list)
    method: str = "e2vpt"
    config: PromptConfig = field(default_factory=PromptConfig)  # a dict is parsed (FormatError if invalid)
    metrics: dict = field(default_factory=dict)
    created: str = ""
    _bytes: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _version: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self):
        self.config = parse_config(self.config)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_"):  # a changed field: the bytes made before no longer say what this set is
            super().__setattr__("_bytes", None)

    # ---- construction and I/O -------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | bytes) -> PromptSet:
        data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
        data = bytes(data)
        header = parse_header(data)  # the one header parser: every malformation is a PromptSetError
        try:
            tensors = st_load(data)
        except Exception as e:  # safetensors raises its own error types on a corrupt body
            raise FormatError(f"corrupt safetensors body: {e}") from None
        meta = header.metadata
        loaded = cls(tensors=tensors, backbone_fingerprint=meta.get("backbone_fingerprint", ""),
                     backbone=meta.get("backbone", ""), labels=header.labels, method=meta.get("method", "e2vpt"),
                     config=header.config, metrics=header.metrics, created=meta.get("created", ""))
        loaded._keep(data)  # the file's own bytes, written by whichever writer: they are its version
        return loaded

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "backbone": self.backbone, "backbone_fingerprint": self.backbone_fingerprint,
                "labels": json.dumps(self.labels), "method": self.method,
                "config": json.dumps(self.config.to_dict(), sort_keys=True),
                "metrics": json.dumps(self.metrics, sort_keys=True),
                "created": self.created or datetime.now(UTC).isoformat(timespec="seconds")}

    def to_bytes(self) -> bytes:
        if self._bytes is not None:
            return self._bytes
        if not self.created:
            self.created = datetime.now(UTC).isoformat(timespec="seconds")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}
        return self._keep(canonical_bytes(st_save(tensors, metadata=self.metadata())))

    def _keep(self, data: bytes) -> bytes:
        self._bytes, self._version = data, hashlib.sha256(data).hexdigest()
        return data

    def save(self, path: str | Path) -> str:
        """Write atomically (temp file + rename); returns the version."""
        write_atomic(path, self.to_bytes())
        return self.version

    @property
    def version(self) -> str:
        """The sha256 of the file's bytes, hashed once when the bytes are made or loaded."""
        self.to_bytes()
        return self._version

    # ---- what it holds ---------------------------------------------------------------------------
    @property
    def deep(self) -> bool:
        return self.config.deep

    @property
    def num_classes(self) -> int:
        return int(self.tensors["head.weight"].shape[0])

    def visual(self, layer: int) -> torch.Tensor | None:
        return self.tensors.get(f"visual.{layer}")

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(key prompts, value prompts), each (H, P, d), or None; shared sets return one tensor twice."""
        if f"kv.{layer}" in self.tensors:
            t = self.tensors[f"kv.{layer}"]
            return t, t
        if f"key.{layer}" in self.tensors:
            return self.tensors[f"key.{layer}"], self.tensors[f"value.{layer}"]
        return None

    def num_prompt_params(self) -> int:
        return sum(t.numel() for n, t in self.tensors.items() if not n.startswith("head."))

    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    # ---- validation against a backbone ------------------------------------------------------------
    def validate(self, backbone: Backbone) -> None:
        """Raise a specific PromptSetError for the first way this set cannot serve on `backbone`."""
        L, D, H, d = backbone.num_layers, backbone.embed_dim, backbone.num_heads, backbone.head_dim
        if not self.backbone_fingerprint:
            raise FingerprintError("metadata 'backbone_fingerprint' is missing: set it to the fingerprint "
                                   "of the backbone the prompts were trained on (Backbone.fingerprint)")
        if self.backbone_fingerprint != backbone.fingerprint:
            from promptserve.backbone import describe_backbone

            raise FingerprintError(f"trained on backbone {self.backbone_fingerprint[:12]} "
                                   f"({describe_backbone(self.backbone)}); this one is {backbone.fingerprint[:12]} "
                                   f"({backbone.source.describe()}): use that backbone, or retrain on this one")
        for name, t in self.tensors.items():
            check_tensor(name, FILE_DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape))
        check_head({name: tuple(t.shape) for name, t in self.tensors.items()}, self.labels)
        if self.config.pooling not in (None, backbone.pooling):
            raise ShapeError(f"prompt set pools with {self.config.pooling!r}, this backbone pools with "
                             f"{backbone.pooling!r}")
        for name, t in self.tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"tensor {name!r} contains NaN or Inf")
            kind, _, idx = name.partition(".")
            if kind != "head" and int(idx) >= L:
                raise ShapeError(f"tensor {name!r} names layer {idx}, the backbone has layers 0..{L - 1}")
        self._expect("head.weight", (self.num_classes, D))
        for i in range(L):
            v = self.visual(i)
            if v is not None:
                if not self.deep and i > 0:
                    raise ShapeError(f"tensor 'visual.{i}' in a shallow set (config deep=false): "
                                     "shallow sets carry only visual.0")
                self._expect(f"visual.{i}", (v.shape[0], D))
            has_key, has_value = f"key.{i}" in self.tensors, f"value.{i}" in self.tensors
            if f"kv.{i}" in self.tensors and (has_key or has_value):
                raise FormatError(f"layer {i} has both 'kv.{i}' and 'key.{i}'/'value.{i}': pick one")
            if has_key != has_value:
                raise MissingTensorError(f"layer {i} has only one of 'key.{i}' and 'value.{i}'")
            for name in (f"kv.{i}", f"key.{i}"):
                if name in self.tensors:
                    self._expect(name, (H, self.tensors[name].shape[1], d))
            if has_key:
                self._expect(f"value.{i}", tuple(self.tensors[f"key.{i}"].shape))
        self._check_config_lengths(L)

    def _check_config_lengths(self, num_layers: int) -> None:
        """Per-layer lengths the config states (the trainer's lists) must be the tensors' own."""
        stated = {"visual_tokens": self.config.visual_tokens, "kv_tokens": self.config.kv_tokens}
        actual = {"visual_tokens": [0 if (v := self.visual(i)) is None else v.shape[0] for i in range(num_layers)],
                  "kv_tokens": [0 if (kv := self.kv(i)) is None else kv[0].shape[1] for i in range(num_layers)]}
        for name, counts in stated.items():
            if isinstance(counts, list) and counts != actual[name]:
                raise FormatError(f"metadata 'config' says {name}={counts}, the tensors hold {actual[name]}: "
                                  "write the config from the tensors (or leave the lengths out)")

    def _expect(self, name: str, shape: tuple[int, ...]) -> None:
        got = tuple(self.tensors[name].shape)
        if got != shape:
            raise ShapeError(f"tensor {name!r} has shape {list(got)}, this backbone needs {list(shape)}")


def prompt_set_nbytes(ps: PromptSet) -> int:
    return sum(t.numel() * t.element_size() for t in ps.tensors.values())

