"""One image pipeline for training, evaluation and serving, so there is no train/serve skew.

decode -> RGB -> resize to the backbone's square input size with its interpolation -> uint8 (S, S, 3)
-> float, normalised with the backbone's mean/std -> (3, S, S).
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


def image_to_uint8(image: Image.Image | bytes | str | Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Any PIL-readable image -> (size, size, 3) uint8."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, str | Path):
        image = Image.open(image)
    with image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC))
        return np.asarray(image, dtype=np.uint8).copy()


def normalise(batch_uint8: torch.Tensor | np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 with the backbone's statistics."""
    x = torch.as_tensor(batch_uint8)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std
