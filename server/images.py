"""Image intake: sniff the format and size from the header alone, refuse what is over the pixel limits
before any pixel is decoded, then decode (at reduced size where the format allows) and resize with
promptserve's own pipeline (`promptserve.preprocess`), the one the trainer uses.

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
from promptserve.preprocess import image_to_uint8
from server.errors import ApiError

SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
SUPPORTED_CONTENT_TYPES = frozenset(SUPPORTED_FORMATS.values()) | {"image/jpg", "image/x-ms-bmp"}
_FORMATS_TEXT = "JPEG, PNG, WebP or BMP"
# Reduced decoding keeps at least this many times the input side, so the final resize still antialiases
# from a larger image (what the trainer's pipeline sees for images of ordinary size).
DECODE_SIDE_MARGIN = 2


@dataclass(frozen=True)
class ImageProbe:
    """What an image's header says, and the pixels decoding it will cost."""

    name: str
    data: bytes
    width: int
    height: int
    decode_pixels: int


def probe_image(data: bytes, input_size: int, max_pixels: int, name: str = "image") -> ImageProbe:
    """Read the header only. Raises ApiError 415 (not a supported image) or 422 (empty, unreadable, or over
    `max_pixels`, a decompression-bomb guard that costs no decoding)."""
    if not data:
        raise ApiError(422, "empty_image", f"{name} is empty")
    with _open(data, name) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ApiError(422, "decompression_bomb", f"{name} is {width}x{height} = {width * height} pixels, over the "
                           f"limit of {max_pixels}; send it at most {int(max_pixels ** 0.5)} pixels on a side")
        scale = _draft_scale(image, input_size) if image.format == "JPEG" else 1
    decode_pixels = -(-width // scale) * -(-height // scale)
    return ImageProbe(name, data, width, height, decode_pixels)


def decode_image(data: bytes, data_config: DataConfig, max_pixels: int, name: str = "image") -> np.ndarray:
    """Encoded bytes -> (S, S, 3) uint8 in the backbone's input size (probe first, then decode)."""
    return decode_probed(probe_image(data, data_config.input_size, max_pixels, name), data_config)


def decode_probed(probe: ImageProbe, data_config: DataConfig) -> np.ndarray:
    size, name = data_config.input_size, probe.name
    try:
        image = _open(probe.data, name)
        if image.format == "JPEG":  # the JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding: far less work
            image.draft("RGB", (DECODE_SIDE_MARGIN * size, DECODE_SIDE_MARGIN * size))
        image.load()
        factor = min(image.size) // (DECODE_SIDE_MARGIN * size)
        if factor >= 2:  # other formats decode whole; a box reduce makes the resize after it cheap
            image = image.reduce(factor)
        return image_to_uint8(image, size, data_config.interpolation)
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "undecodable_image", f"{name} cannot be decoded: {e}") from None


def _open(data: bytes, name: str) -> Image.Image:
    try:  # Image.open reads the header only: format and size are known before any pixel is decoded
        return Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"{name} is not a {_FORMATS_TEXT} image") from None
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "undecodable_image", f"{name} cannot be read: {e}") from None


def _draft_scale(image: Image.Image, input_size: int) -> int:
    """The JPEG scale denominator draft() will pick (the largest of 8, 4, 2 that keeps the margin)."""
    target = DECODE_SIDE_MARGIN * input_size
    for scale in (8, 4, 2):
        if image.size[0] // scale >= target and image.size[1] // scale >= target:
            return scale
    return 1


class FairDecoder:
    """A decode thread pool shared fairly by the requests in flight, within a budget of pixels in flight.

    Each request (`owner`) has its own queue; a free thread takes the next job round-robin across owners, so
    a request with 32 large images delays another request by at most one decode per thread, not 32. A job
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
