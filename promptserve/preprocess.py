"""One image pipeline for training, evaluation and serving, so there is no train/serve skew.

decode (a JPEG at reduced scale) -> RGB -> resize to the backbone's square input size with its interpolation
-> uint8 (S, S, 3) -> float, normalised with the backbone's mean/std -> (3, S, S).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptserve.backbone import DataConfig

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
             "hamming": Image.Resampling.HAMMING}


# Reduced decoding keeps at least this many times the input side, so the final resize still antialiases from
# a larger image: a 12 MP photo decodes at 1/8 scale (0.19 MP), a 128 px JPEG for a 32 px backbone at 1/2.
DECODE_SIDE_MARGIN = 2


def jpeg_draft_scale(width: int, height: int, size: int) -> int:
    """The scale denominator (8, 4, 2 or 1) a JPEG of width x height decodes at for a `size` input: the largest
    that keeps both sides >= DECODE_SIDE_MARGIN * size (what PIL's draft() picks for that request)."""
    target = DECODE_SIDE_MARGIN * size
    for scale in (8, 4, 2):
        if width // scale >= target and height // scale >= target:
            return scale
    return 1


def image_to_uint8(image: Image.Image | bytes | str | Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Any PIL-readable image -> (size, size, 3) uint8: the one decode of training, eval and serving.

    A JPEG is decoded at reduced scale (1/2, 1/4, 1/8: the decoder's own DCT scaling, never the full image in
    memory), other formats whole and then box-reduced, each down to no less than twice the input side; the
    final resize is the backbone's interpolation."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, str | Path):
        image = Image.open(image)
    with image:
        if image.format == "JPEG":
            image.draft("RGB", (DECODE_SIDE_MARGIN * size, DECODE_SIDE_MARGIN * size))
        rgb = image.convert("RGB")
    factor = min(rgb.size) // (DECODE_SIDE_MARGIN * size)
    if factor >= 2:
        rgb = rgb.reduce(factor)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC))
    return np.asarray(rgb, dtype=np.uint8).copy()


def normalise(batch_uint8: torch.Tensor | np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 with the backbone's statistics."""
    x = torch.as_tensor(batch_uint8)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std
