"""Image intake: sniff the format, refuse decompression bombs from the header alone, then decode and
resize with promptserve's own pipeline (`promptserve.preprocess`), the one the trainer uses.

Runs in the decode thread pool, never on the event loop.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from promptserve.backbone import DataConfig
from promptserve.preprocess import image_to_uint8
from server.errors import ApiError

SUPPORTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
SUPPORTED_CONTENT_TYPES = frozenset(SUPPORTED_FORMATS.values()) | {"image/jpg", "image/x-ms-bmp"}
_FORMATS_TEXT = "JPEG, PNG, WebP or BMP"


def decode_image(data: bytes, data_config: DataConfig, max_pixels: int, name: str = "image") -> np.ndarray:
    """Encoded bytes -> (S, S, 3) uint8 in the backbone's input size. Raises ApiError 415 (not an image
    of a supported format), 422 (too many pixels, or a broken file)."""
    if not data:
        raise ApiError(422, "empty_image", f"{name} is empty")
    try:
        # Image.open reads the header only: format and size are known before any pixel is decoded
        image = Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS))
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"{name} is not a {_FORMATS_TEXT} image") from None
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(422, "undecodable_image", f"{name} cannot be read: {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ApiError(422, "decompression_bomb", f"{name} is {width}x{height} = {width * height} pixels, over the "
                       f"limit of {max_pixels} (a decompression bomb guard); send a smaller image")
    try:
        return image_to_uint8(image, data_config.input_size, data_config.interpolation)
    except Image.DecompressionBombError as e:
        raise ApiError(422, "decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "undecodable_image", f"{name} cannot be decoded: {e}") from None
