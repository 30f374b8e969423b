"""Exploration: does a per-image contrast normalisation of the input help the frozen demo backbone?

GTSRB's photos vary widely in brightness and contrast; full fine-tuning can learn to undo that in the stem,
prompts cannot. If normalising each image first lifted the frozen features' linear probe, it would be a
cheap preprocessing step for every method. Judged on each task's validation split (the sweep's: 800 train /
200 val, dtd10 640 / 160, gtsrb held out by track), logistic regression as `promptserve probe` (C = 0.1 on
standardised pooled features); the test split is not read.

    python runs/explore-preprocess/probe_preprocess.py BACKBONE DATA...
"""

import sys

import numpy as np
import torch
from PIL import Image, ImageOps

from promptserve.backbone import load_backbone
from training.data import load_task
from training.experiments.sweep import VAL_GROUP
from training.probe import ProbeData, backbone_extractor, linear_probe, task_label

torch.set_num_threads(1)


def per_image(op):
    return lambda batch: np.stack([np.asarray(op(Image.fromarray(x))) for x in batch])  # (N, 32, 32, 3) uint8


def standardise(batch):
    """Each image to zero mean, unit sd over its pixels and channels, mapped back to uint8 around 120."""
    x = batch.astype(np.float32)
    mean, sd = x.mean(axis=(1, 2, 3), keepdims=True), x.std(axis=(1, 2, 3), keepdims=True) + 1e-3
    return np.clip((x - mean) / sd * 55 + 120, 0, 255).astype(np.uint8)


VARIANTS = {"none": lambda batch: batch,
            "autocontrast (1% cut-off)": per_image(lambda im: ImageOps.autocontrast(im, cutoff=1)),
            "equalize": per_image(ImageOps.equalize), "standardise": standardise}

extract = backbone_extractor(load_backbone(sys.argv[1]))
print(f"backbone {sys.argv[1]}; validation accuracy (%) of the linear probe per input transform")
for data in sys.argv[2:]:
    name = task_label(data).replace("_", "-")
    task = load_task(data, 32, train_size=1000, seed=0, val_group=VAL_GROUP.get(name), log=lambda _m: None,
                     progress=False)
    for label, transform in VARIANTS.items():
        split = ProbeData(name, transform(task.train.images), task.train.labels, transform(task.val.images),
                          task.val.labels)
        result = linear_probe(extract, split)
        print(f"{name}\t{label}\ttrain {result['train']}\tval {result['test']}\tval acc {100 * result['accuracy']:.1f}",
              flush=True)
