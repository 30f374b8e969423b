"""Datasets for prompt tuning: ImageFolder directories or tars, Fashion-MNIST IDX files, VTAB-1k subsets.

Every image goes through `promptserve.preprocess.image_to_uint8` (decode -> RGB -> resize with the
backbone's interpolation) and, per batch, `normalise` with the backbone's mean/std: the exact pipeline
the server runs, so a trained artifact is evaluated on what it will be served (invariant 4).

Data sources (`--data`):
    DIR or FILE.tar          ImageFolder: train/<class>/..., test/<class>/..., optional val/<class>/...
    fmnist:DIR  or  DIR      Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], t10k-...) in DIR
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptserve.preprocess import image_to_uint8, normalise
from training.imagefolder import IMAGE_EXTENSIONS, DatasetError, ImageArray, cache_dir, list_splits, load_split

FMNIST_CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle-boot"]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class TaskData:
    """train / val (may be None) / test (may be None) decoded at the backbone's input size."""

    train: ImageArray
    val: ImageArray | None
    test: ImageArray | None
    classes: list[str]
    source: str

    def summary(self) -> dict:
        return {"source": self.source, "classes": len(self.classes), "train": len(self.train),
                "val": len(self.val) if self.val is not None else 0,
                "test": len(self.test) if self.test is not None else 0}


# ---- sources ------------------------------------------------------------------------------------------
def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def is_idx_dir(path: Path) -> bool:
    return path.is_dir() and _idx_path(path, IDX_FILES["train"][0]) is not None


def _read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_idx_split(root: str | Path, split: str, size: int, interpolation: str) -> ImageArray:
    """Fashion-MNIST (or MNIST) IDX split -> RGB uint8 at `size`. Each 28x28 grey image goes through PIL
    exactly as a client's PNG of it would on the server (grey -> RGB -> resize)."""
    root = Path(root)
    img_path, lbl_path = (_idx_path(root, s) for s in IDX_FILES[split])
    if img_path is None or lbl_path is None:
        raise DatasetError(f"{root} has no {IDX_FILES[split][0]}[.gz] / {IDX_FILES[split][1]}[.gz] for split "
                           f"'{split}'")
    stat = img_path.stat()
    key = hashlib.sha256(f"idx|{img_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{interpolation}"
                         .encode()).hexdigest()[:24]
    cached = cache_dir() / f"{key}.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return ImageArray(z["images"], z["labels"], list(FMNIST_CLASSES))
    raw = _read_idx(img_path, 16).reshape(-1, 28, 28)  # (N, 28, 28) grey
    labels = _read_idx(lbl_path, 8).astype(np.int64)  # (N,)
    if len(raw) != len(labels):
        raise DatasetError(f"{img_path} has {len(raw)} images but {lbl_path} has {len(labels)} labels")
    images = np.stack([image_to_uint8(Image.fromarray(a, mode="L"), size, interpolation) for a in raw])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, cached)
    return ImageArray(images, labels, list(FMNIST_CLASSES))


def check_class_folders(source: Path, split: str) -> None:
    """An ImageFolder class folder with no images is almost always a mistake (a failed copy): say so
    instead of silently training a head with one class fewer."""
    if source.is_dir():
        split_dir = source / split
        if not split_dir.is_dir():
            return
        for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.rglob("*") if f.is_file()):
                raise DatasetError(f"class folder {d} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                                   "add images or remove the folder")
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = tar.getmembers()
        dirs = {m.name.rstrip("/") for m in members if m.isdir() and len(Path(m.name).parts) >= 2
                and Path(m.name).parts[-2] == split}
        filled = {str(Path(m.name).parent) for m in members if m.isfile()
                  and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS}
        empty = sorted(d for d in dirs if d not in filled)
        if empty:
            raise DatasetError(f"class folder(s) {empty} in {source} have no images: add images or remove them")


def load_splits(data: str, size: int, interpolation: str) -> tuple[ImageArray, ImageArray | None, ImageArray | None]:
    """(train, val or None, test or None) from any supported source, labels in the train split's order."""
    if data.startswith("fmnist:"):
        data = data[len("fmnist:"):]
        if not is_idx_dir(Path(data)):
            raise DatasetError(f"fmnist:{data}: no train-images-idx3-ubyte[.gz] there (apt-get install "
                               "dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)")
    source = Path(data)
    if not source.exists():
        raise DatasetError(f"data path {source} does not exist: pass an ImageFolder directory or .tar, or a "
                           "directory of Fashion-MNIST IDX files")
    if is_idx_dir(source):
        return (load_idx_split(source, "train", size, interpolation), None,
                load_idx_split(source, "test", size, interpolation))
    splits = list_splits(source)
    if "train" not in splits:
        raise DatasetError(f"{source} has no train/<class>/<image> folders (splits found: {splits or 'none'})")
    for split in ("train", "val", "test"):
        check_class_folders(source, split)
    train = load_split(source, "train", size, interpolation)
    if len(train.classes) < 2:
        raise DatasetError(f"{source} train split has {len(train.classes)} class: a classifier needs at least 2")
    val = load_split(source, "val", size, interpolation, train.classes) if "val" in splits else None
    test = load_split(source, "test", size, interpolation, train.classes) if "test" in splits else None
    return train, val, test


# ---- VTAB-1k subsets ----------------------------------------------------------------------------------
def balanced_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced, seeded subset of size min(n, len(labels)): classes take turns
    (in a seeded order) giving one shuffled example each, so counts differ by at most one and a
    class with too few images simply runs out."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = [pool[r] for r in range(max(len(p) for p in pools)) for pool in pools if r < len(pool)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def _take(a: ImageArray, idx: np.ndarray) -> ImageArray:
    return ImageArray(a.images[idx], a.labels[idx], a.classes)


def load_task(data: str, size: int, interpolation: str = "bicubic", train_size: int = 0, val_size: int = 200,
              seed: int = 0, log=print) -> TaskData:
    """train_size > 0: a class-balanced seeded subset (VTAB-1k: 1000). Without a val/ split, val_size
    images of that subset (class-balanced, seeded) are held out as `val` and `train` keeps the rest;
    the caller decides whether the final run trains on train + val (VTAB-1k protocol)."""
    train, val, test = load_splits(data, size, interpolation)
    if train_size:
        if train_size >= len(train):
            log(f"--train-size {train_size} >= the {len(train)} training images: using all of them")
        else:
            train = _take(train, balanced_pick(train.labels, train_size, seed))
    if val is None and val_size:
        if val_size >= len(train):
            raise DatasetError(f"val_size={val_size} leaves no training images out of {len(train)}")
        v = balanced_pick(train.labels, val_size, seed + 1)
        rest = np.setdiff1d(np.arange(len(train)), v)
        train, val = _take(train, rest), _take(train, v)
    missing = sorted(set(range(len(train.classes))) - set(np.unique(train.labels).tolist()))
    if missing:
        raise DatasetError(f"classes {[train.classes[i] for i in missing]} have no training images after "
                           "subsetting: raise --train-size")
    return TaskData(train, val, test, list(train.classes), data)


def merge(a: ImageArray, b: ImageArray | None) -> ImageArray:
    if b is None:
        return a
    return ImageArray(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]), a.classes)


# ---- batches ------------------------------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (4px zero padding after normalisation) + horizontal flip on (B, 3, S, S)."""
    from training.pretrain import _augment

    return _augment(x, gen)


def batch_tensor(images: np.ndarray, data_config) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32: the server's normalisation."""
    return normalise(images, data_config)
