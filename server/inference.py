"""One image request, whatever protocol carried it: promptserve's /classify, the Open Inference Protocol over
HTTP (server/oip_http.py) and over gRPC (server/oip_grpc.py) all go through these two steps, so the deadline,
the task's residency while in flight, the pixel limits, the fair decode pool and the queue's back-pressure are
the same for every client:

    async with serving(state, task):              # 422 bad name, 404 unknown task, 504 past the deadline
        results = await predict_images(state, task, [(name, encoded bytes), ...], top_k)

Errors are `ApiError`s (HTTP statuses); the gRPC service maps them to its own status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.batcher import ItemResult, QueueFull
from server.errors import ApiError, translated
from server.images import ImageProbe, decode_probed, probe_image
from server.state import ServerState
from server.tasks import check_task_name


@asynccontextmanager
async def serving(state: ServerState, task: str) -> AsyncIterator[None]:
    """The task is acquired (cold-loaded if needed) and kept resident for the block; the whole block, the
    acquire included, runs under the server's request deadline."""
    check_task_name(task)
    deadline_s = state.settings.request_timeout_s
    try:
        async with asyncio.timeout(deadline_s):
            with translated(task):
                await state.predictor.acquire(task)  # 404 for a task the store does not have
            try:
                yield
            finally:
                state.predictor.release(task)
    except TimeoutError:
        raise ApiError(504, "timeout", f"no answer within the server's {deadline_s:g} s request deadline; retry, "
                                       "or send fewer images", headers={"Retry-After": "1"}) from None


async def predict_images(state: ServerState, task: str, blobs: list[tuple[str, bytes]], top_k: int) -> list[ItemResult]:
    """Decode the encoded images (name for messages, bytes) and answer them in the next mixed-task batches."""
    if len(blobs) > state.settings.max_images_per_request:
        raise too_many_images(str(len(blobs)), state)
    for name, data in blobs:
        if len(data) > state.settings.max_image_bytes:
            raise image_too_large(name, state)
    pixels = await _decode(blobs, state)
    try:
        return await state.predictor.predict(task, pixels, top_k)
    except QueueFull as e:
        raise ApiError(503, "queue_full", f"the server is at capacity ({e}); retry shortly",
                       headers={"Retry-After": "1"}) from None


def too_many_images(count: str, state: ServerState) -> ApiError:
    return ApiError(413, "too_many_images", f"{count} images in one request; the limit is "
                                            f"{state.settings.max_images_per_request}: send them in several "
                                            "requests (promptserve classify and promptserve.Client do)")


def image_too_large(name: str, state: ServerState) -> ApiError:
    return ApiError(413, "image_too_large", f"{name} is over the {state.settings.max_image_bytes}-byte image limit")


async def _decode(blobs: list[tuple[str, bytes]], state: ServerState) -> list:
    """Check every image's header against the pixel limits first (nothing decoded when one is over), then
    decode them in the shared pool, where this request takes its turn with the others."""
    limits, input_size = state.limits, state.engine.data_config.input_size
    probes: list[ImageProbe] = [probe_image(data, input_size, limits.max_image_pixels, name) for name, data in blobs]
    total = sum(p.decode_pixels for p in probes)
    if total > limits.max_request_pixels:
        raise ApiError(413, "too_many_pixels", f"the images of this request decode to {total} pixels, over the "
                                               f"limit of {limits.max_request_pixels} per request: send fewer "
                                               "or smaller images")
    owner, dcfg = object(), state.engine.data_config  # one owner per request: the pool is fair across them
    jobs = decode_jobs(probes)
    decoded = await asyncio.gather(*[state.decoder.run(owner, sum(p.decode_pixels for p in job), _decode_all, job,
                                                       dcfg) for job in jobs])
    return [pixels for job in decoded for pixels in job]


# A pool job decodes a run of images up to this many pixels (or one image): a hop to a decode thread and back costs
# about what decoding a small image does, and a 32-image request of thumbnails took 32 hops
DECODE_JOB_PIXELS = 1 << 16


def decode_jobs(probes: list[ImageProbe]) -> list[list[ImageProbe]]:
    """The images in order, cut into runs of at most DECODE_JOB_PIXELS decoded pixels (an image over it alone)."""
    jobs: list[list[ImageProbe]] = []
    pixels = DECODE_JOB_PIXELS
    for probe in probes:
        if pixels + probe.decode_pixels > DECODE_JOB_PIXELS:
            jobs.append([])
            pixels = 0
        jobs[-1].append(probe)
        pixels += probe.decode_pixels
    return jobs


def _decode_all(probes: list[ImageProbe], data_config) -> list:
    return [decode_probed(p, data_config) for p in probes]
