"""The Open Inference Protocol (KServe v2, as Triton Inference Server speaks it), independent of transport.

A task is a model; its prompt-set versions (sha256 hex, or a unique prefix of 6+ digits) are the model's
versions, and only the current one is ready (a rollback makes an older one current). One input, one or two
outputs:

    IMAGE   BYTES  [-1]      encoded images (JPEG, PNG, WebP, BMP), one per element
    SCORES  FP32   [-1, C]   class probabilities in label order (C = the task's label count); with the
                             classification extension (`classification: k`) BYTES [-1, k] "score:index:label"
    LABEL   BYTES  [-1]      the top-1 label of each image

A BYTES tensor's raw form (binary-data extension, gRPC raw contents) is each element as a 4-byte little-endian
length and its bytes. JSON cannot carry raw bytes, so IMAGE elements in a JSON `data` list are base64 text.
Requests go through server/inference.py like /classify's, so they share its mixed-task batches, deadline and
limits; errors are ApiErrors, which server/oip_http.py and server/oip_grpc.py put in their protocols' forms.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from dataclasses import dataclass

import numpy as np

import promptserve
from prompt_store.base import match_version
from server.errors import ApiError, translated
from server.inference import predict_images, serving
from server.metrics import UNKNOWN_TASK
from server.state import ServerState
from server.tasks import check_task_name

INPUT, SCORES, LABEL = "IMAGE", "SCORES", "LABEL"
OUTPUTS = (SCORES, LABEL)
PLATFORM = "promptserve_e2vpt"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
ALL_LABELS = 1 << 30  # top_k that returns every class (the engine caps it at the task's label count)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False
    classification: int = 0  # k > 0: the classification extension on SCORES


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # FP32 | BYTES
    shape: list[int]
    values: np.ndarray  # FP32: float32 array of `shape`; BYTES: object array of bytes of `shape`

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            return join_bytes(list(self.values.reshape(-1)))
        return self.values.astype("<f4").tobytes()

    def json_data(self) -> list:
        flat = self.values.reshape(-1)
        if self.datatype == "BYTES":
            return [v.decode("utf-8", "replace") for v in flat]
        return [float(v) for v in flat]


# ---- BYTES tensors -----------------------------------------------------------------------------------
def split_bytes(raw: bytes, what: str = INPUT) -> list[bytes]:
    """A BYTES tensor's raw form -> its elements."""
    items, at, n = [], 0, len(raw)
    while at < n:
        if at + 4 > n:
            raise invalid(f"{what}: the raw BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > n:
            raise invalid(f"{what}: an element of {size} bytes runs past the end of the raw data")
        items.append(raw[at:at + size])
        at += size
    return items


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_json_images(data: list) -> list[bytes]:
    """IMAGE's JSON `data` (a flat or nested list of base64 strings) -> encoded images."""
    flat: list = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    out = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise invalid(f"{INPUT}[{i}]: JSON data of a BYTES input must be strings (base64 of the encoded image)")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise invalid(f"{INPUT}[{i}] is not base64: JSON cannot carry raw bytes, so send each image as base64 "
                          "text, or use the binary tensor extension (tritonclient's default)") from None
    return out


def check_image_input(name: str, datatype: str, shape: list[int], count: int) -> None:
    """The one input's name, type and shape against what was sent (`count` elements)."""
    if name != INPUT:
        raise invalid(f"unknown input {name!r}: this model takes one input, {INPUT} (BYTES, shape [-1])")
    if datatype != "BYTES":
        raise invalid(f"input {INPUT} is BYTES (encoded images), not {datatype}")
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != count:
        raise invalid(f"input {INPUT} has shape {shape} but {count} elements were sent")
    if count == 0:
        raise invalid(f"input {INPUT} holds no image")


def requested_outputs(outputs: list[RequestedOutput] | None, binary_default: bool) -> list[RequestedOutput]:
    if not outputs:
        return [RequestedOutput(name, binary_default) for name in OUTPUTS]
    names = [o.name for o in outputs]
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise invalid(f"unknown output(s) {unknown}: this model has {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        raise invalid("an output is requested twice")
    for o in outputs:
        if o.classification < 0:
            raise invalid(f"output {o.name}: classification must be a positive count")
        if o.classification and o.name != SCORES:
            raise invalid(f"classification applies to {SCORES}, not {o.name}")
    return outputs


def invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)


# ---- models ------------------------------------------------------------------------------------------
async def model_record(state: ServerState, task: str, version: str | None = None, with_history: bool = False):
    """(the task's current record, the version asked for resolved against its history or the current one, the
    history's versions oldest first, read only when a version is asked for or `with_history`, else [])."""
    check_task_name(task)
    with translated(task):
        current = await asyncio.to_thread(state.store.resolve, task)
        if not (version or with_history):
            return current, current.version, []
        versions = [r.version for r in await asyncio.to_thread(state.store.history, task)]
        return current, match_version(task, version, versions) if version else current.version, versions


async def model_metadata(state: ServerState, task: str, version: str | None = None) -> dict:
    current, _, versions = await model_record(state, task, version, with_history=True)
    return {"name": task, "versions": versions, "platform": PLATFORM,
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": SCORES, "datatype": "FP32", "shape": [-1, len(current.labels)]},
                        {"name": LABEL, "datatype": "BYTES", "shape": [-1]}]}


async def model_ready(state: ServerState, task: str, version: str | None = None) -> bool:
    """Ready: the version asked for (or none) is the one served now."""
    current, wanted, _ = await model_record(state, task, version)
    return state.ready and wanted == current.version


async def model_config(state: ServerState, task: str, version: str | None = None) -> dict:
    """Triton's model-configuration extension (perf_analyzer reads it): no batch dimension of its own
    (max_batch_size 0), so IMAGE's dims are the tensor's whole shape."""
    current, _, _ = await model_record(state, task, version)
    return {"name": task, "platform": PLATFORM, "max_batch_size": 0,
            "input": [{"name": INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": [{"name": SCORES, "data_type": "TYPE_FP32", "dims": [-1, len(current.labels)]},
                       {"name": LABEL, "data_type": "TYPE_STRING", "dims": [-1]}]}


def server_metadata() -> dict:
    return {"name": "promptserve", "version": promptserve.__version__, "extensions": EXTENSIONS}


# ---- inference ---------------------------------------------------------------------------------------
async def infer(state: ServerState, task: str, version: str | None, images: list[bytes],
                outputs: list[RequestedOutput]) -> tuple[str, list[OutputTensor]]:
    """(the version that answered, the requested output tensors) for the encoded images."""
    metrics, label, status = state.metrics, UNKNOWN_TASK, 500
    try:
        async with serving(state, task):
            label = task
            if version:
                current, wanted, _ = await model_record(state, task, version)
                if wanted != current.version:
                    raise ApiError(400, "version_not_ready", f"version {wanted[:12]} of {task!r} is not the one "
                                   f"served (that is {current.version[:12]}): roll back to it first, or leave "
                                   "the version out")
            results = await predict_images(state, task, [(f"{INPUT}[{i}]", b) for i, b in enumerate(images)],
                                           ALL_LABELS)
        served = results[0].version  # one model_version answers: a swap mid-request is retried by the client
        if any(r.version != served for r in results) or (version and served != wanted):
            raise ApiError(409, "version_changed", f"task {task!r} changed version while this request was served; "
                                                   "retry")
        tensors = _outputs(results, outputs)
        status = 200
        return served, tensors
    except ApiError as e:
        status = e.status_code
        raise
    finally:
        metrics.requests.labels(label, str(status)).inc()


def _outputs(results, outputs: list[RequestedOutput]) -> list[OutputTensor]:
    n, classes = len(results), len(results[0].predictions)
    scores = np.zeros((n, classes), np.float32)  # (N, C) probabilities in label order
    labels: list[str] = [""] * classes
    for i, r in enumerate(results):
        for name, index, score in r.predictions:
            scores[i, index] = score
            labels[index] = name
    top1 = np.array([r.predictions[0][0].encode() for r in results], dtype=object)  # (N,)
    out = []
    for o in outputs:
        if o.name == LABEL:
            out.append(OutputTensor(LABEL, "BYTES", [n], top1))
        elif o.classification:
            k = min(o.classification, classes)
            rows = [[f"{s:f}:{c}:{labels[c]}".encode() for c, s in
                     sorted(enumerate(scores[i]), key=lambda cs: -cs[1])[:k]] for i in range(n)]
            out.append(OutputTensor(SCORES, "BYTES", [n, k], np.array(rows, dtype=object).reshape(n, k)))
        else:
            out.append(OutputTensor(SCORES, "FP32", [n, classes], scores))
    return out
