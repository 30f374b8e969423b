"""The prompt-set file's header contract, checkable without torch (the registry and CLI use it).

A prompt set is a safetensors file; `parse_header` checks everything the header alone can tell before the
body is trusted: sizes, the format tag, tensor names, dtypes and byte ranges.
"""

from __future__ import annotations

import json
import re
import struct

FORMAT = "promptserve/1"
TENSOR_NAME = re.compile(r"^(?:(visual|kv|key|value)\.(0|[1-9][0-9]{0,3})|head\.(weight|bias))$")
FILE_DTYPES = ("F16", "BF16", "F32")
MAX_HEADER_BYTES = 1 << 20


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


class NonFiniteError(PromptSetError):
    reason = "non_finite"


class FingerprintError(PromptSetError):
    """Trained on other backbone weights: refused, never served as garbage."""

    reason = "fingerprint"
    http_status = 409


def parse_header(data: bytes) -> tuple[dict[str, dict], dict[str, str]]:
    """Check a safetensors blob's header before trusting its body: size fields, the format tag,
    tensor names, dtypes and that every tensor's byte range lies inside the body.
    Returns ({tensor name: {dtype, shape, data_offsets}}, metadata). Needs no torch work."""
    if len(data) < 8:
        raise FormatError("not a safetensors file: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise FormatError(f"not a safetensors file: header length {header_len} does not fit the "
                          f"{len(data)}-byte body")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"not a safetensors file: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("metadata must map strings to strings")
    if metadata.get("format") != FORMAT:
        raise FormatError(f"unknown format {metadata.get('format')!r}: expected metadata format={FORMAT!r}")
    body = len(data) - 8 - header_len
    for name, info in header.items():
        if not TENSOR_NAME.match(name):
            raise FormatError(f"unexpected tensor {name!r}: allowed are visual.{{i}}, kv.{{i}}, key.{{i}}, "
                              "value.{i}, head.weight, head.bias")
        if not isinstance(info, dict) or info.get("dtype") not in FILE_DTYPES:
            got = info.get("dtype") if isinstance(info, dict) else info
            raise DTypeError(f"tensor {name!r} has dtype {got!r}: use float16, bfloat16 or float32")
        start, end = info.get("data_offsets", (-1, -1))
        if not (0 <= start <= end <= body):
            raise FormatError(f"tensor {name!r} points outside the file body")
    for needed in ("head.weight", "head.bias"):
        if needed not in header:
            raise MissingTensorError(f"missing tensor {needed!r}: every prompt set carries its linear head")
    return header, metadata


def canonical_bytes(data: bytes) -> bytes:
    """The same file with its header JSON written with sorted keys: safetensors writes metadata in hash
    order, so without this the same prompt set saved twice would get two versions (sha256 of the bytes)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the body 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + header_len:]
