"""The Open Inference Protocol over HTTP/REST (`/v2/...`), beside promptserve's own API; the semantics are in
server/oip.py. Requests are JSON, or JSON followed by raw tensor bytes (the binary tensor data extension: the
`Inference-Header-Content-Length` header says where the JSON ends), which tritonclient.http sends by default.
Errors use the protocol's body, `{"error": message}` (plus promptserve's short `code`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from server import oip
from server.errors import ApiError
from server.oip import RequestedOutput
from server.state import ServerState, get_state, ready_state
from server.tasks import TaskName

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
HEADER_LENGTH = "Inference-Header-Content-Length"


class OipErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, for a human (the protocol's field).")
    code: str | None = Field(None, description="promptserve's short error code, e.g. unknown_task, queue_full.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="Every stored prompt-set version, oldest first; only the current one "
                                            "is ready.")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelConfig(BaseModel):
    """Triton's model configuration (the model_configuration extension), as perf_analyzer reads it."""

    name: str
    platform: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferOutputRequest(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[InferOutputRequest] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


ERRORS = {code: {"model": OipErrorResponse} for code in (400, 401, 403, 404, 408, 409, 413, 422, 500, 503, 504)}
READY_ERRORS = {**ERRORS, 400: {"model": ModelReadiness, "description": "Not ready: another version is served"}}
def _inlined(schema: dict) -> dict:
    """A pydantic schema with its `$defs` references replaced by the definitions (not recursive models), so it
    can sit inside the OpenAPI document, where `#/$defs/...` points nowhere."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


_INFER_BODY = {"required": True, "description": "An inference request (JSON); with the binary tensor data extension "
               f"the JSON ends after `{HEADER_LENGTH}` bytes and raw tensor bytes follow.",
               "content": {"application/json": {"schema": _inlined(InferRequest.model_json_schema())},
                           "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@router.get("", operation_id="oip_server_metadata", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(**oip.server_metadata())


@router.get("/health/live", operation_id="oip_server_live", response_model=Liveness, summary="Server live",
            responses={503: {"model": Liveness}})
async def server_live(state: ServerState = Depends(get_state)):
    if state.error:
        return JSONResponse({"live": False}, status_code=503)
    return Liveness(live=True)


@router.get("/health/ready", operation_id="oip_server_ready", response_model=Readiness, summary="Server ready",
            responses={503: {"model": Readiness}})
async def server_ready(state: ServerState = Depends(get_state)):
    if not state.ready:
        return JSONResponse({"ready": False}, status_code=503, headers={"Retry-After": "1"})
    return Readiness(ready=True)


@router.get("/models/{task}", operation_id="oip_model_metadata", response_model=ModelMetadata, responses=ERRORS,
            summary="A task as a model: its versions, input and outputs")
async def model_metadata(task: TaskName, state: ServerState = Depends(ready_state)) -> ModelMetadata:
    return ModelMetadata(**await oip.model_metadata(state, task))


@router.get("/models/{task}/versions/{version}", operation_id="oip_model_version_metadata",
            response_model=ModelMetadata, responses=ERRORS, summary="Model metadata, naming one version")
async def model_version_metadata(task: TaskName, version: str, state: ServerState = Depends(ready_state)):
    return ModelMetadata(**await oip.model_metadata(state, task, version))


@router.get("/models/{task}/ready", operation_id="oip_model_ready", response_model=ModelReadiness,
            responses=READY_ERRORS, summary="Model ready: 200 while the task is served")
async def model_ready(task: TaskName, state: ServerState = Depends(ready_state)):
    return await _ready(state, task, None)


@router.get("/models/{task}/versions/{version}/ready", operation_id="oip_model_version_ready",
            response_model=ModelReadiness, responses=READY_ERRORS,
            summary="Model version ready: 200 when it is the version served, 400 for another stored version")
async def model_version_ready(task: TaskName, version: str, state: ServerState = Depends(ready_state)):
    return await _ready(state, task, version)


async def _ready(state: ServerState, task: str, version: str | None):
    if await oip.model_ready(state, task, version):
        return ModelReadiness(name=task, ready=True)
    return JSONResponse({"name": task, "ready": False}, status_code=400)


@router.get("/models/{task}/config", operation_id="oip_model_config", response_model=ModelConfig, responses=ERRORS,
            summary="Triton's model configuration extension")
async def model_config(task: TaskName, state: ServerState = Depends(ready_state)) -> ModelConfig:
    return ModelConfig(**await oip.model_config(state, task))


@router.post("/models/{task}/infer", operation_id="oip_infer", response_model=InferResponse, responses=ERRORS,
             summary="Classify encoded images (IMAGE, BYTES) with the task's current version",
             openapi_extra={"requestBody": _INFER_BODY})
async def infer(task: TaskName, request: Request, state: ServerState = Depends(ready_state)):
    return await _infer(state, task, None, request)


@router.post("/models/{task}/versions/{version}/infer", operation_id="oip_version_infer",
             response_model=InferResponse, responses=ERRORS, openapi_extra={"requestBody": _INFER_BODY},
             summary="Classify with one version (it must be the one served: 400 otherwise)")
async def version_infer(task: TaskName, version: str, request: Request, state: ServerState = Depends(ready_state)):
    return await _infer(state, task, version, request)


async def _infer(state: ServerState, task: str, version: str | None, request: Request) -> Response:
    body = await request.body()  # BodyLimitMiddleware caps it (413) before it is all held
    req, binary = _parse(body, request.headers.get(HEADER_LENGTH))
    tensor = req.inputs[0]
    images = _images(tensor, binary)
    oip.check_image_input(tensor.name, tensor.datatype, tensor.shape, len(images))
    binary_default = (req.parameters or {}).get("binary_data_output", False) is True
    outputs = oip.requested_outputs([_requested(o) for o in req.outputs or []], binary_default)
    try:
        served, tensors = await oip.infer(state, task, version, images, outputs)
    except ApiError as e:
        if e.status_code in (415, 422):  # an image that is not one: the protocol's invalid argument
            raise ApiError(400, e.error, e.detail, e.headers) from None
        raise
    return _response(task, served, req.id, tensors, outputs)


def _parse(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise oip.invalid(f"{HEADER_LENGTH} {header_length!r} is not a length within the body's "
                              f"{len(body)} bytes")
        head, binary = body[:int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        return InferRequest.model_validate(json.loads(head)), binary
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise oip.invalid("the inference request is not JSON (with binary tensors, send "
                          f"{HEADER_LENGTH}: <bytes of JSON>)") from None
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:3])
        raise oip.invalid(f"not an inference request: {where}") from None


def _images(tensor: InferInput, binary: bytes) -> list[bytes]:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise oip.invalid(f"input {tensor.name} has both JSON data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise oip.invalid(f"input {tensor.name}: binary_data_size {size!r} is not the {len(binary)} bytes "
                              "that follow the JSON")
        return oip.split_bytes(binary, tensor.name)
    if binary:
        raise oip.invalid(f"{len(binary)} bytes follow the JSON but no input has binary_data_size")
    if tensor.data is None:
        raise oip.invalid(f"input {tensor.name} has neither data nor binary_data_size")
    return oip.decode_json_images(tensor.data)


def _requested(o: InferOutputRequest) -> RequestedOutput:
    params = o.parameters or {}
    k = params.get("classification", 0)
    binary = params.get("binary_data", False)
    if not isinstance(k, int) or isinstance(k, bool) or not isinstance(binary, bool):
        raise oip.invalid(f"output {o.name}: classification is a count and binary_data a boolean")
    return RequestedOutput(o.name, binary, k)


def _response(task: str, version: str, request_id: str | None, tensors: list[oip.OutputTensor],
              outputs: list[RequestedOutput]) -> Response:
    head: dict[str, Any] = {"model_name": task, "model_version": version, "outputs": []}
    if request_id is not None:
        head["id"] = request_id
    raw = []
    for tensor, wanted in zip(tensors, outputs, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if wanted.binary:
            data = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            entry["data"] = tensor.json_data()
        head["outputs"].append(entry)
    text = json.dumps(head).encode()
    if not raw:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(raw), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})
