"""POST /classify/{task}: images in, top-k labels out, answered by whichever batch they rode in."""

from __future__ import annotations

import logging
from time import perf_counter

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.batcher import ItemResult
from server.errors import ApiError
from server.images import SUPPORTED_CONTENT_TYPES
from server.inference import image_too_large, predict_images, serving, too_many_images
from server.metrics import UNKNOWN_TASK
from server.schemas import ClassifyResponse, Prediction, Timing, error_responses
from server.state import ServerState, ready_state
from server.tasks import TaskName

router = APIRouter(tags=["classify"])
log = logging.getLogger("promptserve.server")
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the answer": not a server error
REPLICA_HEADER = "X-Promptserve-Replica"  # names the engine replica that answered (Ray Serve; absent in one process)

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "description": "One image as the raw body, or multipart with one `file` part or several `files` parts.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary", "description": "One image: answered with an object."},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                      "description": "Several images: answered with a list, in order."}},
            # one of the two, never both, never none: what the route accepts (422 otherwise)
            "oneOf": [{"required": ["file"]}, {"required": ["files"]}]}},
        **{ctype: _IMAGE_BODY for ctype in ("image/jpeg", "image/png", "image/webp", "image/bmp")},
    },
}


@router.post(
    "/classify/{task}",
    operation_id="classify",
    response_model=ClassifyResponse | list[ClassifyResponse],
    summary="Classify one or several images with a task",
    description="The answer's shape follows the request's form, never the number of images: one image (a raw "
                "image body, or one multipart `file` part) answers one `ClassifyResponse` object; multipart `files` "
                "parts answer a list of them in the order sent, also for a single `files` part. `file` and `files` "
                "in one body is a 422.",
    responses=error_responses(400, 401, 403, 404, 408, 413, 415, 422, 500, 503, 504),
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def classify(request: Request, response: Response, task: TaskName,
                   top_k: int | None = Query(None, ge=1, le=1000, description="Labels per image (default 5)."),
                   state: ServerState = Depends(ready_state)):
    start = perf_counter()
    metrics = state.metrics
    label, status = UNKNOWN_TASK, 500
    try:
        async with serving(state, task):
            label = task
            blobs, several = await _read_images(request, state)
            results = await predict_images(state, task, blobs, top_k or state.settings.default_top_k)
        if results[0].replica:
            response.headers[REPLICA_HEADER] = results[0].replica
        total_ms = 1e3 * (perf_counter() - start)
        answers = [_answer(task, r, total_ms) for r in results]
        status = 200
        metrics.request_seconds.labels(task).observe(total_ms / 1e3)
        return answers if several else answers[0]
    except HTTPException as e:  # ours, and Starlette's own (a malformed multipart body is its 400)
        status = e.status_code
        raise
    except ClientDisconnect:
        status = CLIENT_CLOSED
        raise
    finally:
        metrics.requests.labels(label, str(status)).inc()


def _answer(task: str, r: ItemResult, total_ms: float) -> ClassifyResponse:
    return ClassifyResponse(
        task=task, version=r.version,
        predictions=[Prediction(label=lab, index=i, score=s) for lab, i, s in r.predictions],
        timing_ms=Timing(queue=round(1e3 * r.queue_s, 3), compute=round(1e3 * r.compute_s, 3),
                         total=round(total_ms, 3)))


async def _read_images(request: Request, state: ServerState) -> tuple[list[tuple[str, bytes]], bool]:
    """[(name for messages, encoded bytes)], and whether the client sent the list form (`files`)."""
    s = state.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=s.max_images_per_request + 1, max_fields=16,
                                      max_part_size=64 * 1024)
        except HTTPException as e:  # Starlette's multipart parser stops at max_files with a generic 400
            if e.status_code == 400 and str(e.detail).startswith("Too many files"):
                raise too_many_images("more than " + str(s.max_images_per_request + 1), state) from None
            raise
        try:
            several = "files" in form
            if len(form.getlist("file")) > 1 or (several and "file" in form):
                raise ApiError(422, "several_file_parts", "the multipart body has more than one image under "
                                                          "`file`: send several images as `files` parts")
            parts = [("file", p) for p in form.getlist("file")] + [
                (f"files[{i}]", p) for i, p in enumerate(form.getlist("files"))]
            if not parts:
                raise ApiError(422, "no_image", "the multipart body needs a `file` part (one image) or `files` "
                                                "parts (several)")
            if len(parts) > s.max_images_per_request:
                raise too_many_images(str(len(parts)), state)
            blobs = []
            for name, part in parts:
                if not isinstance(part, UploadFile):
                    raise ApiError(422, "no_image", f"`{name}` is a text field; send it as a file part")
                data = await part.read(s.max_image_bytes + 1)
                label = f"{name} ({part.filename})" if part.filename else name
                if len(data) > s.max_image_bytes:
                    raise image_too_large(label, state)
                blobs.append((label, data))
            return blobs, several
        finally:
            await form.close()
    if ctype in SUPPORTED_CONTENT_TYPES:
        data = await request.body()
        if len(data) > s.max_image_bytes:
            raise image_too_large("the image", state)
        return [("image", data)], False
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype or '(none)'!r} is not accepted: send the image as the raw body with "
                   "Content-Type image/jpeg, image/png, image/webp or image/bmp, or as multipart/form-data with "
                   "a `file` part (or several `files` parts)")
