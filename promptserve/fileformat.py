"""The prompt-set file's header contract, checkable without torch (the registry, the server and the CLI use it).

A prompt set is a safetensors file. `parse_header` is the one parser of its header: it checks everything the
header alone can tell before the body is trusted (sizes, the format tag, tensor names, dtypes, ranks, byte
ranges, the JSON metadata and its types) and turns every way it can be malformed into the PromptSetError of
its class, never an IndexError or a RecursionError. `PromptSet.load` and the registry both read through it.
`check_tensor` and `check_head` are the one check of tensor names, dtypes, ranks, the head and the labels:
the header's and, through `PromptSet.validate`, those of a set built in memory.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from promptserve.config import ConfigError, PromptConfig

FORMAT = "promptserve/1"
TENSOR_NAME = re.compile(r"^(?:(visual|kv|key|value)\.(0|[1-9][0-9]{0,3})|head\.(weight|bias))$")
FILE_DTYPES = {"F16": 2, "BF16": 2, "F32": 4}  # dtype -> bytes per element
RANK = {"visual": 2, "kv": 3, "key": 3, "value": 3, "head.weight": 2, "head.bias": 1}
MAX_HEADER_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # metadata values are shallow; deeper nesting is an attack on the parser, not data
TENSOR_FIELDS = {"dtype", "shape", "data_offsets"}


class PromptSetError(ValueError):
    """A prompt set that must not be served. `reason` is a short stable code (for metrics and APIs)."""

    reason = "invalid"
    http_status = 422


class FormatError(PromptSetError):
    reason = "format"


class DTypeError(PromptSetError):
    reason = "dtype"


class MissingTensorError(PromptSetError):
    reason = "missing_tensor"


class ShapeError(PromptSetError):
    reason = "shape"


class LabelsError(PromptSetError):
    reason = "labels"


class LabelsJSONError(LabelsError, FormatError):
    """The labels metadata is not JSON at all: a format error of the labels (reason "labels")."""


class NonFiniteError(PromptSetError):
    reason = "non_finite"


class TooLargeError(PromptSetError):
    """More prompt tokens or bytes than the server's limits allow."""

    reason = "too_large"
    http_status = 413


class FingerprintError(PromptSetError):
    """Trained on other backbone weights: refused, never served as garbage."""

    reason = "fingerprint"
    http_status = 409


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A checked header: tensor layout plus the metadata, its JSON fields decoded and type-checked."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    labels: list[str]
    config: PromptConfig
    metrics: dict

    @property
    def num_classes(self) -> int:
        return self.tensors["head.weight"].shape[0]

    def max_prompt_tokens(self) -> int:
        """The most visual or key/value prompt tokens any one layer carries."""
        counts = [info.shape[0] if name.startswith("visual.") else info.shape[1]
                  for name, info in self.tensors.items() if not name.startswith("head.")]
        return max(counts, default=0)

    def prompt_bytes(self) -> int:
        return sum(info.nbytes for name, info in self.tensors.items() if not name.startswith("head."))

    def check_limits(self, max_tokens: int, max_bytes: int) -> None:
        """TooLargeError when the prompts are longer or bigger than a server serves (checked before loading)."""
        tokens, nbytes = self.max_prompt_tokens(), self.prompt_bytes()
        if tokens > max_tokens:
            raise TooLargeError(f"a layer carries {tokens} prompt tokens; this server serves at most {max_tokens} "
                                "per layer (prune or shorten the prompts)")
        if nbytes > max_bytes:
            raise TooLargeError(f"the prompts take {nbytes} bytes; this server serves at most {max_bytes}")


def parse_header(data: bytes) -> Header:
    """Check a safetensors blob's header before trusting its body. Needs no torch work."""
    if len(data) < 8:
        raise FormatError("not a safetensors file: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise FormatError(f"not a safetensors file: header length {header_len} does not fit the "
                          f"{len(data)}-byte body")
    raw = _loads(data[8:8 + header_len], "header")
    if not isinstance(raw, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("metadata must map strings to strings")
    if metadata.get("format") != FORMAT:
        raise FormatError(f"unknown format {str(metadata.get('format'))[:40]!r}: expected metadata format={FORMAT!r}")
    tensors = _tensor_layout(raw, len(data) - 8 - header_len)
    labels = _json_field(metadata, "labels", None, list, LabelsError)
    classes = check_head({name: info.shape for name, info in tensors.items()}, labels)
    return Header(tensors=tensors, metadata=metadata,
                  labels=[str(i) for i in range(classes)] if labels is None else labels,
                  config=parse_config(_json_field(metadata, "config", {}, dict, FormatError)),
                  metrics=_json_field(metadata, "metrics", {}, dict, FormatError))


def check_tensor(name: str, dtype: Any, shape: Any) -> None:
    """`dtype` as safetensors names it (F32 ...); `shape` as a header holds it (not yet known to be a list)."""
    if not TENSOR_NAME.match(name):
        raise FormatError(f"unexpected tensor {name[:40]!r}: allowed are visual.{{i}}, kv.{{i}}, key.{{i}}, "
                          "value.{i}, head.weight, head.bias")
    if not isinstance(dtype, str) or dtype not in FILE_DTYPES:
        raise DTypeError(f"tensor {name!r} has dtype {str(dtype)[:20]!r}: use float16, bfloat16 or float32")
    rank = RANK.get(name) or RANK[name.partition(".")[0]]
    if not (isinstance(shape, list | tuple) and len(shape) == rank and all(_is_count(n) for n in shape)):
        raise ShapeError(f"tensor {name!r} needs a shape of {rank} non-negative integers, got "
                         f"{json.dumps(shape)[:60]}")


def check_head(shapes: dict[str, tuple[int, ...]], labels: list | None) -> int:
    """The number of classes, after the checks; `labels` None: not stated (the class numbers stand in)."""
    for needed in ("head.weight", "head.bias"):
        if needed not in shapes:
            raise MissingTensorError(f"missing tensor {needed!r}: every prompt set carries its linear head")
    classes = shapes["head.weight"][0]
    if classes < 1:
        raise ShapeError("head.weight has no classes")
    if shapes["head.bias"] != (classes,):
        raise ShapeError(f"tensor 'head.bias' has shape {list(shapes['head.bias'])}, the head has {classes} classes")
    if labels is not None and not all(isinstance(x, str) for x in labels):
        raise LabelsError("metadata 'labels' must be a JSON list of strings")
    if labels is not None and len(labels) != classes:
        raise LabelsError(f"{len(labels)} labels for a head of {classes} classes")
    return classes


def _tensor_layout(raw: dict, body: int) -> dict[str, TensorInfo]:
    """Names, dtypes, ranks and byte ranges: each range the size its shape and dtype say, inside the body,
    the ranges not overlapping (what safetensors itself will rely on when it loads the body)."""
    tensors: dict[str, TensorInfo] = {}
    for name, info in raw.items():
        if not isinstance(info, dict) or set(info) != TENSOR_FIELDS:
            raise FormatError(f"tensor {name[:40]!r} must be described by exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        check_tensor(name, dtype, shape)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
            raise FormatError(f"tensor {name!r} needs data_offsets [start, end], got {json.dumps(offsets)[:60]}")
        start, end = offsets
        if not start <= end <= body:
            raise FormatError(f"tensor {name!r} points outside the file body")
        if end - start != math.prod(shape) * FILE_DTYPES[dtype]:
            raise FormatError(f"tensor {name!r} has {end - start} bytes, its shape {shape} and dtype {dtype} "
                              "need a different number")
        tensors[name] = TensorInfo(dtype, tuple(shape), start, end)
    ranges = sorted((t.start, t.end) for t in tensors.values() if t.nbytes)
    if any(prev_end > start for (_, prev_end), (start, _) in zip(ranges, ranges[1:], strict=False)):
        raise FormatError("tensors overlap in the file body")
    return tensors


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 48


def _loads(text: bytes | str, what: str, error: type[FormatError] = FormatError) -> Any:
    if _nesting(text) > MAX_JSON_DEPTH:
        raise error(f"{what} nests JSON more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        prefix = "not a safetensors file: header is not JSON" if what == "header" else f"{what} is not valid JSON"
        raise error(f"{prefix} ({str(e)[:80]})") from None


def _nesting(text: bytes | str) -> int:
    """An upper bound of the JSON nesting depth (brackets inside strings count too): cheap, and it keeps
    json.loads away from inputs that would exhaust the interpreter's recursion limit."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # the common case, at C speed
        return 0
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _json_field(metadata: dict[str, str], key: str, default: Any, kind: type, error: type[PromptSetError]) -> Any:
    if key not in metadata:
        return default
    value = _loads(metadata[key], f"metadata {key!r}", LabelsJSONError if key == "labels" else FormatError)
    if not isinstance(value, kind):
        raise error(f"metadata {key!r} must be a JSON {'list' if kind is list else 'object'}, got "
                    f"{type(value).__name__}")
    return value


def parse_config(config: dict | PromptConfig) -> PromptConfig:
    """The metadata's `config` JSON as a validated PromptConfig; a malformed one is a FormatError."""
    if isinstance(config, PromptConfig):
        return config
    try:
        return PromptConfig.from_dict(config)
    except ConfigError as e:
        raise FormatError(f"metadata 'config': {e}") from None
    except TypeError as e:  # a key given twice and the like: still the file's fault, said in one line
        raise FormatError(f"metadata 'config' is malformed ({e})") from None


def canonical_bytes(data: bytes) -> bytes:
    """The same file with its header JSON written with sorted keys: safetensors writes metadata in hash
    order, so without this the same prompt set saved twice would get two versions (sha256 of the bytes)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the body 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + header_len:]
