"""The frozen-feature linear probe: how much a backbone's features carry a task with no tuning at all.

One protocol for every feature extractor (a backbone, a distilled student mid-run, the teacher): the task's
training images (a class-balanced seeded subset of `train_size`, as docs/results.md's runs use: VTAB-1k's
1,000), every image of its test split, each at the backbone's input size; features standardised on the
training images; logistic regression with C = 0.1 (scikit-learn, lbfgs); test accuracy. A backbone's
features are the served forward's pooled, final-norm features (`training.loop.features`), so the probe
measures what prompt sets start from. The teacher sees the same 32x32 images, upsampled to its input size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.data import load_task

logger = logging.getLogger(__name__)

MISSING_SKLEARN = "the probe needs scikit-learn: pip install 'promptserve[distill]'"
Extractor = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 -> (N, D) float features


@dataclass(frozen=True)
class ProbeData:
    """A task's probe images, decoded once: train (a balanced subset) and test, at one input size."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_probe_data(data: str, size: int, interpolation: str = "bicubic", train_size: int | None = 1000,
                    seed: int = 0, name: str | None = None) -> ProbeData:
    task = load_task(data, size, interpolation, train_size=train_size, val_fraction=0, seed=seed,
                     log=lambda _msg: None, progress=False)
    if task.test is None:
        raise ValueError(f"{data} has no test split: the probe scores on test/<class>/ images")
    return ProbeData(name or task_label(data), task.train.images, task.train.labels, task.test.images,
                     task.test.labels)


def task_label(data: str) -> str:
    """A short name for a --data value: the file or folder name without .tar (fmnist:DIR -> fashion-mnist)."""
    if data.startswith("fmnist:"):
        return "fashion-mnist"
    name = data.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".tar")


def linear_probe(extract: Extractor, data: ProbeData, C: float = 0.1) -> dict:
    """Test accuracy of a logistic regression on standardised frozen features."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        raise RuntimeError(MISSING_SKLEARN) from e
    train_x = np.asarray(extract(data.train_images), np.float64)  # (N_train, D)
    test_x = np.asarray(extract(data.test_images), np.float64)  # (N_test, D)
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(train_x), data.train_labels)
    acc = float((clf.predict(scaler.transform(test_x)) == data.test_labels).mean())
    return {"task": data.name, "train": len(data.train_labels), "test": len(data.test_labels), "accuracy": acc}


def backbone_extractor(backbone) -> Extractor:
    """The served forward's pooled features of a `promptserve.Backbone`."""
    from training.loop import features

    return lambda images: features(backbone, images).numpy()


def module_extractor(model, name: str, kwargs: dict) -> Extractor:
    """Features of a timm ViT being trained: a frozen copy is wrapped as a Backbone, so a run's probe
    measures exactly what the exported backbone file will give."""
    import copy

    from promptserve.backbone import Backbone

    return backbone_extractor(Backbone(copy.deepcopy(model).float(), name, kwargs))


def probe_all(extract: Extractor, datasets: list[ProbeData], C: float = 0.1) -> dict:
    """{"tasks": [per-task result], "mean": mean accuracy}."""
    rows = [linear_probe(extract, d, C) for d in datasets]
    return {"tasks": rows, "mean": float(np.mean([r["accuracy"] for r in rows])) if rows else float("nan")}
