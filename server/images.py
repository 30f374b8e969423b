"""Image intake: sniff the format and size from the header alone, refuse what would decode to more pixels than
the limits allow before any pixel is decoded, then decode with promptserve's own pipeline
(`promptserve.preprocess.image_to_uint8`, a JPEG at reduced scale), the one the trainer and eval use.

Decoding runs in a thread pool shared fairly by the requests in flight (`FairDecoder`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from promptserve.backbone import DataConfig
from promptserve.preprocess import image_to_uint8, jpeg_draft_scale
from server.errors import ApiError

SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
SUPPORTED_CONTENT_TYPES = frozenset(SUPPORTED_FORMATS.values()) | {"image/jpg", "image/x-ms-bmp"}
_FORMATS_TEXT = "JPEG, PNG, WebP or BMP"


@dataclass(frozen=True)
class ImageProbe:
    """What an image's header says, and the pixels decoding it will cost."""

    name: str
    data: bytes
    width: int
    height: int
    decode_pixels: int


def probe_image(data: bytes, input_size: int, max_pixels: int, name: str = "image") -> ImageProbe:
    """Read the header only. Raises ApiError 415 (not a supported image) or 422 (empty, unreadable, or decoding
    to more than `max_pixels`: a decompression-bomb guard that costs no decoding). A JPEG decodes at reduced
    scale, so the limit bounds what is decoded, not the camera's resolution: a 12 MP photo decodes to 0.19 MP."""
    if not data:
        raise ApiError(422, "empty_image", f"{name} is empty")
    with _open(data, name) as image:
        width, height = image.size
        scale = jpeg_draft_scale(width, height, input_size) if image.format == "JPEG" else 1
    decode_pixels = -(-width // scale) * -(-height // scale)
    if decode_pixels > max_pixels:
        side = int((max_pixels * scale * scale) ** 0.5)
        raise ApiError(422, "decompression_bomb", f"{name} is {width}x{height} and decodes to {decode_pixels} pixels, "
                       f"over the limit of {max_pixels}; shrink it to at most {side} pixels on a side")
    return ImageProbe(name, data, width, height, decode_pixels)


def decode_image(data: bytes, data_config: DataConfig, max_pixels: int, name: str = "image") -> np.ndarray:
    """Encoded bytes -> (S, S, 3) uint8 in the backbone's input size (probe first, then decode)."""
    return decode_probed(probe_image(data, data_config.input_size, max_pixels, name), data_config)


def decode_probed(probe: ImageProbe, data_config: DataConfig) -> np.ndarray:
    """The trainer's decode (promptserve.preprocess.image_to_uint8) of a probed image: no train/serve skew."""
    try:
        return image_to_uint8(_open(probe.data, probe.name), data_config.input_size, data_config.interpolation)
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{probe.name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "undecodable_image", f"{probe.name} cannot be decoded: {e}") from None


def _open(data: bytes, name: str) -> Image.Image:
    try:  # Image.open reads the header only: format and size are known before any pixel is decoded
        return Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"{name} is not a {_FORMATS_TEXT} image") from None
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "undecodable_image", f"{name} cannot be read: {e}") from None


class FairDecoder:
    """A decode thread pool shared fairly by the requests in flight, within a budget of pixels in flight.

    Each request (`owner`) has its own queue; a free thread takes the next job round-robin across owners, so
    a request with 32 large images delays another request by at most one job per thread, not 32 (a job is one
    image, or a few small ones: server/inference.py's DECODE_JOB_PIXELS). A job
    also waits while the pixels being decoded would exceed `max_pixels` (one job always fits), which bounds
    the decode memory of the whole server. Lives on the event loop; only the decoding runs in threads.
    """

    def __init__(self, threads: int, max_pixels: int):
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="promptserve-decode")
        self._free_threads, self.max_pixels = threads, max_pixels
        self._pixels_in_flight = 0
        self._waiting: OrderedDict[object, deque[tuple[asyncio.Future, int]]] = OrderedDict()

    async def run(self, owner: object, cost: int, fn, *args):
        loop = asyncio.get_running_loop()
        gate: asyncio.Future = loop.create_future()
        self._waiting.setdefault(owner, deque()).append((gate, cost))
        self._dispatch()
        try:
            await gate
        except asyncio.CancelledError:
            if gate.done() and not gate.cancelled():  # granted just as the request went away: give it back
                self._done(cost)
            else:
                self._forget(owner, gate)
            raise
        job = self._executor.submit(fn, *args)
        # the slot is freed when the thread is done, even if the request stopped waiting for it
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done, cost))
        return await asyncio.wrap_future(job)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        while self._free_threads and self._waiting:
            owner, queue = next(iter(self._waiting.items()))
            gate, cost = queue[0]
            if self._pixels_in_flight and self._pixels_in_flight + cost > self.max_pixels:
                return  # the next in turn waits for room; nobody overtakes it (no starvation of big images)
            queue.popleft()
            if queue:
                self._waiting.move_to_end(owner)  # round-robin: this owner's next job goes behind the others
            else:
                del self._waiting[owner]
            if gate.cancelled():
                continue
            self._free_threads -= 1
            self._pixels_in_flight += cost
            gate.set_result(None)

    def _done(self, cost: int) -> None:
        self._free_threads += 1
        self._pixels_in_flight -= cost
        self._dispatch()

    def _forget(self, owner: object, gate: asyncio.Future) -> None:
        queue = self._waiting.get(owner)
        if queue is None:
            return
        for entry in list(queue):
            if entry[0] is gate:
                queue.remove(entry)
        if not queue:
            del self._waiting[owner]
        self._dispatch()
