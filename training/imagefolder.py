"""Read an ImageFolder tree (`root/<split>/<class>/<image>`) from a directory or a `.tar`, decoded once.

Decode cache: each split is decoded to one uint8 array and saved as
`$PROMPTSERVE_CACHE/datasets/<key>.npz` (default `~/.cache/promptserve/datasets/`), so a training run
never touches JPEG decoding after the first. The key hashes the split's member list (every image's path,
size in bytes and mtime, from the directory or the tar's headers), the class order, the target size and
the interpolation: adding, removing, replacing or touching an image makes a new entry. Clear it with
`rm -rf ~/.cache/promptserve/datasets` (or the $PROMPTSERVE_CACHE one); `promptserve train --no-cache`
decodes without reading or writing it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptserve.files import atomic_target
from promptserve.preprocess import image_to_uint8
from training.progress import bar

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A data path that cannot be read as an ImageFolder tree; the message says what to fix."""


@dataclass
class ImageArray:
    """A decoded split: images (N, S, S, 3) uint8, labels (N,) int64, class names in label order, and each
    image's `<class>/<file name>` (None where the source has no file names: IDX files)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> ImageArray:
        """The images at `idx`, with their labels and names."""
        names = None if self.names is None else [self.names[i] for i in idx]
        return ImageArray(self.images[idx], self.labels[idx], self.classes, names)


@dataclass(frozen=True)
class Member:
    """One file of a directory or tar: its path inside the source, size in bytes and mtime."""

    name: str
    size: int
    mtime: float


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTSERVE_CACHE", Path.home() / ".cache" / "promptserve")) / "datasets"


def _decode(data: bytes | str | Path, size: int, interpolation: str) -> np.ndarray:
    # the serving path decodes with the same function: no train/serve skew
    return image_to_uint8(data, size, interpolation)


def list_members(source: str | Path) -> list[Member]:
    """Every file of a directory (stat) or tar (header fields: no data is read), sorted by name."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"data path {source} does not exist: pass an ImageFolder directory or .tar")
    if source.is_dir():
        out = []
        for p in source.rglob("*"):
            if p.is_file():
                st = p.stat()
                out.append(Member(str(p.relative_to(source)), st.st_size, st.st_mtime))
        return sorted(out, key=lambda m: m.name)
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            return sorted((Member(m.name, m.size, m.mtime) for m in tar.getmembers() if m.isfile()),
                          key=lambda m: m.name)
    raise DatasetError(f"{source} is neither a directory nor a tar archive")


def _split_entries(members: list[Member], split: str) -> list[tuple[str, Member]]:
    """(class, member) for every image under `<anything>/<split>/<class>/`."""
    entries = []
    for m in members:
        parts = Path(m.name).parts
        if len(parts) >= 3 and parts[-3] == split and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS:
            entries.append((parts[-2], m))
    return sorted(entries, key=lambda e: (e[0], e[1].name))


def list_splits(source: str | Path, members: list[Member] | None = None) -> list[str]:
    """The split folders (train, val, test, ...) present in a directory or tar."""
    members = list_members(source) if members is None else members
    return sorted({Path(m.name).parts[-3] for m in members if len(Path(m.name).parts) >= 3
                   and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS})


def cache_key(entries: list[tuple[str, Member]], size: int, interpolation: str, classes: list[str]) -> str:
    h = hashlib.sha256(f"imagefolder/3|{size}|{interpolation}|{classes}".encode())  # 3: reduced JPEG decode
    for c, m in entries:
        h.update(f"\n{c}|{m.name}|{m.size}|{m.mtime}".encode())
    return h.hexdigest()[:24]


def load_split(source: str | Path, split: str, size: int, interpolation: str = "bicubic",
               classes: list[str] | None = None, use_cache: bool = True, members: list[Member] | None = None,
               progress: bool = True) -> ImageArray:
    """Decode every image of one split, resized to size x size. `classes` fixes the label order
    (pass the train split's classes when loading val/test so indices agree); `members` reuses a
    listing from `list_members` (a big tar's headers are read once per run, not once per split)."""
    source = Path(source).resolve()
    members = list_members(source) if members is None else members
    entries = _split_entries(members, split)
    if not entries:
        raise DatasetError(f"no images under '{split}/<class>/' in {source} (splits found: "
                           f"{list_splits(source, members) or 'none'})")
    present = sorted({c for c, _ in entries})
    classes = classes or present
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DatasetError(f"split '{split}' of {source} has classes the train split lacks: {unknown}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c, _ in entries], np.int64)
    return _decoded(source, entries, labels, classes, size, interpolation, use_cache, progress, f"decode {split}")


def load_unlabeled(source: str | Path, size: int, interpolation: str = "bicubic", use_cache: bool = True,
                   progress: bool = True) -> ImageArray:
    """Decode every image file anywhere under a directory or .tar, whatever its folders, resized to size x
    size; labels are all -1 and `classes` is empty (images for distillation, whose teacher needs no labels)."""
    source = Path(source).resolve()
    entries = [("", m) for m in list_members(source) if Path(m.name).suffix.lower() in IMAGE_EXTENSIONS]
    if not entries:
        raise DatasetError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) anywhere in {source}")
    labels = np.full(len(entries), -1, np.int64)
    return _decoded(source, entries, labels, [], size, interpolation, use_cache, progress, "decode unlabeled")


def _decoded(source: Path, entries: list[tuple[str, Member]], labels: np.ndarray, classes: list[str], size: int,
             interpolation: str, use_cache: bool, progress: bool, desc: str) -> ImageArray:
    """The entries' images decoded (through the decode cache), with the given labels and classes."""
    names = [f"{c}/{Path(m.name).name}" if c else m.name for c, m in entries]  # from the listing: cache or not
    cached = cache_dir() / f"{cache_key(entries, size, interpolation, classes)}.npz"
    if use_cache and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return ImageArray(z["images"], z["labels"], [str(c) for c in z["classes"]], names)

    images = np.empty((len(entries), size, size, 3), np.uint8)
    steps = bar(enumerate(entries), desc=desc, total=len(entries), enabled=progress)
    if source.is_dir():
        for i, (_, m) in steps:
            images[i] = _decode(source / m.name, size, interpolation)
    else:
        with tarfile.open(source) as tar:
            for i, (_, m) in steps:
                images[i] = _decode(tar.extractfile(m.name).read(), size, interpolation)
    steps.close()
    result = ImageArray(images, labels, list(classes), names)
    if use_cache:
        with atomic_target(cached) as tmp:
            np.savez(tmp, images=images, labels=labels, classes=np.array(classes, dtype=str))
    return result
