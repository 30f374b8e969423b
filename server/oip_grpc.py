"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, Triton's service definition, whose
generated stubs tritonclient ships), served by grpc.aio on the server's own event loop beside HTTP:
`promptserve serve --grpc-port P` (the `[grpc]` extra). The semantics are server/oip.py's, so a gRPC request
rides the same mixed-task batches as /classify and /v2 over HTTP, under the same limits and deadline.

Auth: the same bearer tokens, as `authorization: Bearer <token>` call metadata (ServerLive and ServerReady are
open, like the HTTP probes). Errors: the HTTP status an ApiError carries becomes its gRPC code (a bad image is
INVALID_ARGUMENT, an unknown task NOT_FOUND, a full queue UNAVAILABLE), never an internal error.
"""

from __future__ import annotations

import logging
import secrets

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server import oip
from server.auth import WRONG_API_TOKEN
from server.errors import ApiError
from server.state import ServerState

log = logging.getLogger("promptserve.server")

STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          408: grpc.StatusCode.DEADLINE_EXCEEDED, 409: grpc.StatusCode.ABORTED,
          413: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
          422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
          504: grpc.StatusCode.DEADLINE_EXCEEDED, 507: grpc.StatusCode.RESOURCE_EXHAUSTED}
CONFIG_TYPES = {"TYPE_STRING": mc.TYPE_STRING, "TYPE_FP32": mc.TYPE_FP32}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The calls a client of the protocol makes; the rest (shared memory, repository, tracing) stay
    UNIMPLEMENTED, as the base class answers."""

    def __init__(self, state: ServerState):
        self.state = state

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.state.error is None)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request, context):
        await self._check(context)
        return pb.ServerMetadataResponse(**oip.server_metadata())

    async def ModelReady(self, request, context):
        await self._check(context)
        try:
            ready = await oip.model_ready(self.state, request.name, request.version or None)
        except ApiError as e:
            if e.status_code not in (404, 422):  # an unknown task or version is simply not ready, as Triton says
                await context.abort(STATUS.get(e.status_code, grpc.StatusCode.INTERNAL), e.detail)
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request, context):
        await self._check(context)
        meta = await self._call(context, oip.model_metadata(self.state, request.name, request.version or None))
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        **tensors)

    async def ModelConfig(self, request, context):
        await self._check(context)
        cfg = await self._call(context, oip.model_config(self.state, request.name, request.version or None))
        inputs = [mc.ModelInput(name=t["name"], data_type=CONFIG_TYPES[t["data_type"]], dims=t["dims"])
                  for t in cfg["input"]]
        outputs = [mc.ModelOutput(name=t["name"], data_type=CONFIG_TYPES[t["data_type"]], dims=t["dims"])
                   for t in cfg["output"]]
        return pb.ModelConfigResponse(config=mc.ModelConfig(name=cfg["name"], platform=cfg["platform"],
                                                            max_batch_size=cfg["max_batch_size"], input=inputs,
                                                            output=outputs))

    async def ModelInfer(self, request, context):
        await self._check(context)
        return await self._call(context, self._infer(request))

    async def _infer(self, request) -> pb.ModelInferResponse:
        if len(request.inputs) != 1:
            raise oip.invalid(f"this model takes one input, {oip.INPUT}; {len(request.inputs)} were sent")
        tensor = request.inputs[0]
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise oip.invalid("raw_input_contents must hold one entry per input")
            images = oip.split_bytes(request.raw_input_contents[0], tensor.name)
        else:
            images = list(tensor.contents.bytes_contents)
        oip.check_image_input(tensor.name, tensor.datatype, list(tensor.shape), len(images))
        wanted = [oip.RequestedOutput(o.name, True, _int_param(o.parameters, "classification"))
                  for o in request.outputs]
        outputs = oip.requested_outputs(wanted, binary_default=True)
        version, tensors = await oip.infer(self.state, request.model_name, request.model_version or None, images,
                                           outputs)
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=version, id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in tensors],
            raw_output_contents=[t.raw() for t in tensors])

    async def _check(self, context) -> None:
        """The API token (or the admin token) when one is configured, then readiness."""
        expected = self.state.api_token
        if expected is not None:
            token = _bearer(context.invocation_metadata())
            if token is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this call needs `authorization: Bearer "
                                                                     "<API token>` metadata")
            if not (secrets.compare_digest(token.encode(), expected.encode())
                    or secrets.compare_digest(token.encode(), self.state.admin_token.encode())):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, WRONG_API_TOKEN)
        if not self.state.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is still loading; retry shortly")

    async def _call(self, context, awaitable):
        """Await the protocol call; an ApiError becomes its gRPC status, anything else INTERNAL (logged)."""
        try:
            return await awaitable
        except ApiError as e:
            await context.abort(STATUS.get(e.status_code, grpc.StatusCode.INTERNAL), e.detail)
        except Exception:
            log.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "the server failed to answer this call; the error was "
                                                          "logged")


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _int_param(parameters, name: str) -> int:
    if name not in parameters:
        return 0
    p = parameters[name]
    value = getattr(p, p.WhichOneof("parameter_choice") or "int64_param")
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise oip.invalid(f"parameter {name} must be an integer")
    return int(value)


async def start(state: ServerState, host: str, port: int, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """Start the service on host:port (0: any free port); returns the server and the port bound."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port} (in use?)")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s:%d", host, bound)
    return server, bound
