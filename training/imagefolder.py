"""Read an ImageFolder tree (`root/<split>/<class>/<image>`) from a directory or a `.tar`, decoded once.

Small-image datasets are decoded to one uint8 array per split and cached on disk (keyed by the source's
path, size and mtime plus the target size), so a training epoch never touches JPEG decoding again.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptserve.preprocess import image_to_uint8

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A data path that cannot be read as an ImageFolder tree; the message says what to fix."""


@dataclass
class ImageArray:
    """A decoded split: images (N, S, S, 3) uint8, labels (N,) int64, class names in label order."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTSERVE_CACHE", Path.home() / ".cache" / "promptserve")) / "datasets"


def _decode(data: bytes | str | Path, size: int, interpolation: str) -> np.ndarray:
    # the serving path decodes with the same function: no train/serve skew
    return image_to_uint8(data, size, interpolation)


def _split_entries(names: list[str], split: str) -> list[tuple[str, str]]:
    """(class, member name) for every image under `<anything>/<split>/<class>/` in a list of paths."""
    entries = []
    for name in names:
        parts = Path(name).parts
        if len(parts) < 3 or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if parts[-3] == split:
            entries.append((parts[-2], name))
    return sorted(entries)


def list_splits(source: str | Path) -> list[str]:
    """The split folders (train, val, test, ...) present in a directory or tar."""
    names = _member_names(Path(source))
    return sorted({Path(n).parts[-3] for n in names if len(Path(n).parts) >= 3
                   and Path(n).suffix.lower() in IMAGE_EXTENSIONS})


def _member_names(source: Path) -> list[str]:
    if not source.exists():
        raise DatasetError(f"data path {source} does not exist: pass an ImageFolder directory or .tar")
    if source.is_dir():
        return [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            return [m.name for m in tar.getmembers() if m.isfile()]
    raise DatasetError(f"{source} is neither a directory nor a tar archive")


def load_split(source: str | Path, split: str, size: int, interpolation: str = "bicubic",
               classes: list[str] | None = None, use_cache: bool = True) -> ImageArray:
    """Decode every image of one split, resized to size x size. `classes` fixes the label order
    (pass the train split's classes when loading val/test so indices agree)."""
    source = Path(source).resolve()
    stat = source.stat() if source.exists() else None
    key = hashlib.sha256(f"{source}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}|{split}|{size}|"
                         f"{interpolation}|{classes}".encode()).hexdigest()[:24]
    cached = cache_dir() / f"{key}.npz"
    if use_cache and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return ImageArray(z["images"], z["labels"], [str(c) for c in z["classes"]])

    names = _member_names(source)
    entries = _split_entries(names, split)
    if not entries:
        found = sorted({Path(n).parts[-3] for n in names if len(Path(n).parts) >= 3})
        raise DatasetError(f"no images under '{split}/<class>/' in {source} (splits found: {found or 'none'})")
    present = sorted({c for c, _ in entries})
    classes = classes or present
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DatasetError(f"split '{split}' of {source} has classes the train split lacks: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    images = np.empty((len(entries), size, size, 3), np.uint8)
    labels = np.array([index[c] for c, _ in entries], np.int64)
    if source.is_dir():
        for i, (_, name) in enumerate(entries):
            images[i] = _decode(source / name, size, interpolation)
    else:
        with tarfile.open(source) as tar:
            for i, (_, name) in enumerate(entries):
                images[i] = _decode(tar.extractfile(name).read(), size, interpolation)
    result = ImageArray(images, labels, list(classes))
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels, classes=np.array(classes))
        os.replace(tmp, cached)
    return result
