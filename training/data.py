"""Datasets for prompt tuning: ImageFolder directories or tars, Fashion-MNIST IDX files, VTAB-1k subsets.

Every image goes through `promptserve.preprocess.image_to_uint8` (decode -> RGB -> resize with the
backbone's interpolation) and, per batch, `normalise` with the backbone's mean/std: the exact pipeline
the server runs, so a trained artifact is evaluated on what it will be served (docs/design.md).

Data sources (`--data`):
    DIR or FILE.tar          ImageFolder: train/<class>/..., test/<class>/..., optional val/<class>/...
    fmnist:DIR  or  DIR      Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], t10k-...) in DIR

Validation split (when the data has no val/): a fraction of the training images (default 20%, at most
200: VTAB-1k's 800/200), class-balanced and seeded, at least one image per class and never a class's
last training image; with `--val-group`, whole groups of images (frames of one track), so fewer where groups
do not add up to the share, and none for a class whose groups are all too big. Decoded splits are cached on
disk: see training/imagefolder.py.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from promptserve.files import atomic_target
from promptserve.preprocess import image_to_uint8
from training.imagefolder import (
    IMAGE_EXTENSIONS,
    DatasetError,
    ImageArray,
    Member,
    cache_dir,
    list_members,
    list_splits,
    load_split,
)

logger = logging.getLogger(__name__)  # the CLI passes its own `log`; library use goes to logging

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


def load_idx_split(root: str | Path, split: str, size: int, interpolation: str, use_cache: bool = True) -> ImageArray:
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
    if use_cache and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return ImageArray(z["images"], z["labels"], list(FMNIST_CLASSES))
    raw = _read_idx(img_path, 16).reshape(-1, 28, 28)  # (N, 28, 28) grey
    labels = _read_idx(lbl_path, 8).astype(np.int64)  # (N,)
    if len(raw) != len(labels):
        raise DatasetError(f"{img_path} has {len(raw)} images but {lbl_path} has {len(labels)} labels")
    images = np.stack([image_to_uint8(Image.fromarray(a, mode="L"), size, interpolation) for a in raw])
    if not use_cache:
        return ImageArray(images, labels, list(FMNIST_CLASSES))
    with atomic_target(cached) as tmp:
        np.savez(tmp, images=images, labels=labels)
    return ImageArray(images, labels, list(FMNIST_CLASSES))


def check_class_folders(source: Path, split: str, members: list[Member]) -> None:
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
        with tarfile.open(source) as tar:  # directories are not in the file listing: read their headers
            dirs = {m.name.rstrip("/") for m in tar.getmembers() if m.isdir() and len(Path(m.name).parts) >= 2
                    and Path(m.name).parts[-2] == split}
        filled = {str(Path(m.name).parent) for m in members if Path(m.name).suffix.lower() in IMAGE_EXTENSIONS}
        empty = sorted(d for d in dirs if d not in filled)
        if empty:
            raise DatasetError(f"class folder(s) {empty} in {source} have no images: add images or remove them")


def data_source(data: str) -> Path:
    """The path a --data value names, or a DatasetError saying what is missing (before any decoding)."""
    if data.startswith("fmnist:"):
        data = data[len("fmnist:"):]
        if not is_idx_dir(Path(data)):
            raise DatasetError(f"fmnist:{data}: no train-images-idx3-ubyte[.gz] there (apt-get install "
                               "dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)")
    source = Path(data)
    if not source.exists():
        raise DatasetError(f"data path {source} does not exist: pass an ImageFolder directory or .tar, or a "
                           "directory of Fashion-MNIST IDX files")
    return source


def load_splits(data: str, size: int, interpolation: str, use_cache: bool = True, progress: bool = True,
                splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[ImageArray | None, ...]:
    """The asked splits (default train, val, test; None where absent) from any supported source, labels in
    the train split's order (or, without a train split, the split's own sorted classes)."""
    source = data_source(data)
    if is_idx_dir(source):
        return tuple(load_idx_split(source, s, size, interpolation, use_cache) if s in IDX_FILES else None
                     for s in splits)
    members = list_members(source)  # one listing (a tar's headers are read once)
    present = list_splits(source, members)
    if "train" in splits and "train" not in present:
        raise DatasetError(f"{source} has no train/<class>/<image> folders (splits found: {present or 'none'})")
    for split in splits:
        check_class_folders(source, split, members)
    loaded: dict[str, ImageArray | None] = {}
    classes = None
    for split in sorted(splits, key=lambda s: s != "train"):  # train first: it fixes the label order
        if split not in present:
            loaded[split] = None
            continue
        loaded[split] = load_split(source, split, size, interpolation, classes, use_cache, members, progress)
        if split == "train":
            classes = loaded[split].classes
            if len(classes) < 2:
                raise DatasetError(f"{source} train split has {len(classes)} class: a classifier needs at least 2")
    return tuple(loaded[s] for s in splits)


# ---- VTAB-1k subsets ----------------------------------------------------------------------------------
def balanced_pick(labels: np.ndarray, n: int, seed: int, cap: np.ndarray | None = None) -> np.ndarray:
    """Indices of a class-balanced, seeded subset of size min(n, available): classes take turns (in a
    seeded order) giving one shuffled example each, so counts differ by at most one and a class with too
    few images simply runs out. cap[c] (optional) bounds what class c may give."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    if cap is not None:
        pools = [p[:cap[c]] for p, c in zip(pools, classes, strict=True)]
    order = [pool[r] for r in range(max(len(p) for p in pools)) for pool in pools if r < len(pool)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def validation_size(n_images: int, n_classes: int, fraction: float, at_most: int) -> int:
    """How many images `validation_split` holds out at most: the fraction, at least one per class, <= at_most."""
    return min(at_most, max(n_classes, round(fraction * n_images)))


def validation_split(labels: np.ndarray, classes: list[str], fraction: float, at_most: int,
                     seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices held out for validation: round(fraction * N) images, at most `at_most`, at least one per
    class, class-balanced and seeded; no class gives more than its share (fraction of its images, at least
    one) and none gives its last image, so an unbalanced folder keeps its small classes in training.
    groups (N,) (optional): images of one group (frames of one video, photos of one person) are held out
    together or not at all, so validation never scores an image whose near-twin trained (see `group_ids`)."""
    counts = np.bincount(labels, minlength=len(classes))
    thin = [f"{classes[c]} ({counts[c]})" for c in range(len(classes)) if counts[c] < 2]
    if thin:
        raise DatasetError(f"too few images to hold out a validation split: class(es) {', '.join(thin)} need at "
                           "least 2 training images (one to train, one to validate): add images, add a val/ "
                           "split, or pass --val-fraction 0 --no-hp-search")
    n = validation_size(len(labels), len(classes), fraction, at_most)
    cap = np.minimum(counts - 1, np.maximum(1, np.round(fraction * counts).astype(np.int64)))
    if groups is None:
        return balanced_pick(labels, n, seed, cap=cap)
    return _grouped_pick(labels, groups, n, cap, seed)


def _grouped_pick(labels: np.ndarray, groups: np.ndarray, n: int, cap: np.ndarray, seed: int) -> np.ndarray:
    """balanced_pick over whole groups: classes take turns (seeded order) giving their next shuffled group
    (a group's class: its first image's). A group joins only if the total stays <= n, every class it holds
    stays within its cap and keeps a training image; a class with no validation image yet may exceed its cap
    with a group no bigger than an even share of n (so small classes still get one, and one big group does not
    spend the budget of the others). A group that does not fit now never will: it is dropped."""
    rng = np.random.default_rng(seed)
    _, group_of = np.unique(groups, return_inverse=True)
    order = np.argsort(group_of, kind="stable")  # each group's indices, ascending, in one pass
    members = np.split(order, np.flatnonzero(np.diff(group_of[order])) + 1)
    counts = np.bincount(labels, minlength=len(cap))
    even_share = max(1, n // len(np.unique(labels)))
    queues = {int(c): deque(g for g in rng.permutation(len(members)) if labels[members[g][0]] == c)
              for c in rng.permutation(np.unique(labels))}
    taken, chosen = np.zeros_like(counts), []
    while any(queues.values()):
        for queue in queues.values():
            while queue:
                idx = members[queue.popleft()]
                gives = np.bincount(labels[idx], minlength=len(cap))
                after = taken + gives
                first = (taken == 0) & (len(idx) <= even_share)
                within = (gives == 0) | (after <= cap) | first  # only the classes it holds
                if len(chosen) + len(idx) <= n and within.all() and (after < counts).all():
                    taken, chosen = after, chosen + idx.tolist()
                    break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def group_ids(names: list[str], pattern: str, log=logger.info) -> np.ndarray:
    """Each name's group for `validation_split`: what `pattern` matches in `<class>/<file name>` (its first
    capture group if it has one and it took part); a name it does not match is a group of its own."""
    rule = re.compile(pattern)
    keys, unmatched = [], 0
    for name in names:
        m = rule.search(name)
        key = None if m is None else (m.group(1) if rule.groups else m.group(0))  # None: its group took no part
        unmatched += m is None
        keys.append(key or name)  # an empty match names no group
    if unmatched == len(names):
        raise DatasetError(f"--val-group '{pattern}' matches none of the {len(names)} training images' names; it "
                           f"is matched against '<class>/<file name>', e.g. {names[0]!r}")
    if unmatched:
        log(f"warning: --val-group '{pattern}' matches {len(names) - unmatched} of {len(names)} names; each of "
            "the others is a group of its own")
    return np.unique(np.asarray(keys), return_inverse=True)[1]


FRAME_PREFIX = r"^(.+)_[^_/]*$"  # `<class>/<prefix>_<frame>.png`: the prefix, e.g. GTSRB's track


def twins_hint(names: list[str], n_classes: int) -> str | None:
    """A note for a split held out image by image when many file names look like frames of shared prefixes
    (GTSRB's `<track>_<frame>.png`): such near-twins on both sides of the split inflate validation. None when
    few names share a prefix, or when the prefixes are no finer than the classes (`banded_0001.jpg`)."""
    rule = re.compile(FRAME_PREFIX)
    prefix_of = {n: m.group(1) for n in names if (m := rule.match(n))}
    keys, sizes = np.unique(list(prefix_of.values()), return_counts=True) if prefix_of else ([], np.zeros(0, int))
    shared = int(sizes[sizes > 1].sum())
    if len(sizes) <= 2 * n_classes or shared < 0.2 * len(names):
        return None
    size_of = dict(zip(keys, sizes, strict=True))
    example = next(n for n, prefix in prefix_of.items() if size_of[prefix] > 1)
    return (f"note: {shared} of the {len(names)} training images share a file-name prefix (before the last '_', "
            f"e.g. '{example}') with another; if those are near-twins (frames of one track or video), validation "
            f"held out image by image overstates accuracy: --val-group '{FRAME_PREFIX}' holds each prefix out whole")


def warn_thin_classes(train: ImageArray, log=logger.info, at_least: int = 10) -> None:
    counts = np.bincount(train.labels, minlength=len(train.classes))
    thin = [f"{train.classes[c]} ({counts[c]})" for c in np.argsort(counts, kind="stable") if counts[c] < at_least]
    if thin:
        log(f"warning: {len(thin)} of {len(train.classes)} classes have fewer than {at_least} training images: "
            f"{', '.join(thin[:10])}{' ...' if len(thin) > 10 else ''}; their accuracy will be noisy and the "
            "model may barely learn them: add images")


def load_task(data: str, size: int, interpolation: str = "bicubic", train_size: int | None = None,
              val_fraction: float = 0.2, val_max: int = 200, seed: int = 0, log=logger.info, use_cache: bool = True,
              progress: bool = True, val_group: str | None = None) -> TaskData:
    """train_size: a class-balanced seeded subset of that many images (VTAB-1k: 1000; None: all). Without a
    val/ split, a validation split is held out of it (see `validation_split`; val_fraction 0: none) and `train`
    keeps the rest; the caller decides whether the final run trains on train + val (VTAB-1k protocol).
    val_group: a regular expression naming each image's group (`group_ids`): no group straddles train and val."""
    train, val, test = load_splits(data, size, interpolation, use_cache, progress)
    if train_size:
        if train_size >= len(train):
            log(f"--train-size {train_size} >= the {len(train)} training images: using all of them")
        else:
            log(f"using a class-balanced subset of {train_size} of the {len(train)} training images (--train-size)")
            train = train.take(balanced_pick(train.labels, train_size, seed))
    held_out = val is None and val_fraction > 0 and val_max > 0
    groups = None
    if val_group and held_out:
        if train.names is None:
            raise DatasetError(f"--val-group needs image file names and {data} has none (IDX files): leave it out")
        groups = group_ids(train.names, val_group, log)
        log(f"validation split by group (--val-group '{val_group}'): {groups.max() + 1} groups in "
            f"{len(train)} training images")
    elif val_group and val is not None:
        log(f"note: {data} has its own val/ split; --val-group is ignored")
    elif val_group:
        log("note: no validation split is held out (--val-fraction 0 or --val-max 0); --val-group is ignored")
    elif held_out and train.names is not None and (hint := twins_hint(train.names, len(train.classes))):
        log(hint)
    if held_out:
        v = validation_split(train.labels, train.classes, val_fraction, val_max, seed + 1, groups)
        if groups is not None and len(v) == 0:
            budget = validation_size(len(train), len(train.classes), val_fraction, val_max)
            raise DatasetError(f"--val-group '{val_group}': no group fits the validation split (at most {budget} "
                               "images, none a class's last): "
                               "use a pattern that makes smaller groups, raise --val-fraction, or add a val/ split")
        rest = np.setdiff1d(np.arange(len(train)), v)
        train, val = train.take(rest), train.take(v)
        scored = set(val.labels.tolist())
        unscored = [c for i, c in enumerate(train.classes) if i not in scored]
        if unscored:
            why = ("every group of theirs is bigger than the split leaves room for, or holds their last training "
                   "image" if groups is not None else "the split has fewer images than there are classes")
            log(f"warning: {len(unscored)} class(es) have no validation image ({', '.join(unscored[:5])}"
                f"{' ...' if len(unscored) > 5 else ''}): {why}; validation scores the others")
    missing = sorted(set(range(len(train.classes))) - set(np.unique(train.labels).tolist()))
    if missing:
        raise DatasetError(f"classes {[train.classes[i] for i in missing]} have no training images after "
                           "subsetting: raise --train-size")
    warn_thin_classes(train, log)
    return TaskData(train, val, test, list(train.classes), data)


def merge(a: ImageArray, b: ImageArray | None) -> ImageArray:
    if b is None:
        return a
    names = None if a.names is None or b.names is None else a.names + b.names
    return ImageArray(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]), a.classes, names)


# ---- batches ------------------------------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop (4px zero padding after normalisation) + horizontal flip on (B, 3, S, S); flip=False: the crop
    only (signs, digits, text: their mirror images are other classes or none).
    Pretraining's recipe too: its checkpoints resume with this exact use of `gen`."""
    b, _, s, _ = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(s))[:, None, :, None].expand(b, 3, s, s + 8)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(s))[:, None, None, :].expand(b, 3, s, s)
    x = x.gather(3, cols)
    if not flip:
        return x
    flipped = torch.rand(b, generator=gen) < 0.5
    return torch.where(flipped[:, None, None, None], x.flip(3), x)
