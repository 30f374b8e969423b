"""Procedural "dead leaves" images: unlabeled pictures for distillation that no dataset licence covers and
no demo task contains.

The dead-leaves model (Matheron 1968; Lee, Mumford and Huang 2001) stacks opaque shapes whose sizes follow a
power law, p(r) ~ r^-3, which reproduces the scale invariance, occlusions and edge statistics of natural images.
Baradad et al. 2021 ("Learning to see by looking at noise") found its textured, mixed-shape variant among the
best procedural sources for pre-training. Here it widens what the distillation teacher is asked about: CIFAR-10
shows ten object classes; these show edges, blobs, corners and stripes at every scale and colour, and the
teacher answers for them too.

    python -m training.synthetic --out runs/synthetic/dead-leaves --count 25000

writes <out>/<first image index of the chunk>/<index>.png (32x32 RGB), seeded: the same command gives the same
images. `promptserve distill --unlabeled <out>` adds them to the distillation views.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.progress import bar

logger = logging.getLogger(__name__)

SUPERSAMPLE = 2  # drawn at twice the output size, then area-averaged: smooth edges without a rasteriser
SHAPES = 96  # shapes per image, drawn back to front: about 2 layers deep, a little background still shows
R_MIN, R_MAX = 1.5, 24.0  # radius range in output pixels (the power law puts most shapes near R_MIN)
PERIOD = (1.5, 12.0)  # grating period range in output pixels (the finest ones blur towards their mean colour)


def dead_leaves(count: int, seed: int, size: int = 32) -> np.ndarray:
    """(count, size, size, 3) uint8 images. Each shape is a disc or a rotated rectangle (aspect 0.25-1), filled
    with one colour or, half the time, a sinusoidal grating between two colours across the shape's short axis.
    Sizes scale with `size`: at 32 the canvas is 64 pixels."""
    gen = torch.Generator().manual_seed(seed)
    n, canvas_size, scale = count, SUPERSAMPLE * size, size / 32

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    r_min, r_max = SUPERSAMPLE * R_MIN * scale, SUPERSAMPLE * R_MAX * scale  # in canvas pixels
    axis = torch.arange(canvas_size, dtype=torch.float32) + 0.5
    ys, xs = axis[:, None], axis[None, :]  # (C, 1), (1, C)
    canvas = uniform(n, 3, 1, 1).expand(n, 3, canvas_size, canvas_size).clone()  # (N, 3, C, C) background colour
    for _ in range(SHAPES):
        u = uniform(n)
        radius = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5  # (N,) inverse CDF of r^-3
        margin = 8 * scale  # canvas pixels: centres a little off the canvas too, shapes cut by the border
        cx, cy = uniform(n, lo=-margin, hi=canvas_size + margin), uniform(n, lo=-margin, hi=canvas_size + margin)
        angle = uniform(n, hi=math.pi)
        dx = xs[None] - cx[:, None, None]  # (N, 1, C)
        dy = ys[None] - cy[:, None, None]  # (N, C, 1)
        along = dx * angle.cos()[:, None, None] + dy * angle.sin()[:, None, None]  # (N, C, C)
        across = -dx * angle.sin()[:, None, None] + dy * angle.cos()[:, None, None]
        aspect = uniform(n, lo=0.25, hi=1.0)[:, None, None]
        r = radius[:, None, None]
        disc = along ** 2 + across ** 2 < r ** 2
        rectangle = (along.abs() < r) & (across.abs() < r * aspect)
        mask = torch.where(uniform(n)[:, None, None] < 0.5, disc, rectangle)  # (N, C, C)

        colour_a, colour_b = uniform(n, 3, 1, 1), uniform(n, 3, 1, 1)
        period = uniform(n, lo=SUPERSAMPLE * PERIOD[0] * scale, hi=SUPERSAMPLE * PERIOD[1] * scale)[:, None, None]
        phase = uniform(n, hi=2 * math.pi)[:, None, None]
        grating = 0.5 + 0.5 * torch.sin(2 * math.pi * across / period + phase)  # (N, C, C)
        textured = (uniform(n) < 0.5)[:, None, None]
        mix = torch.where(textured, grating, torch.zeros_like(grating))[:, None]  # (N, 1, C, C)
        fill = colour_a + (colour_b - colour_a) * mix  # (N, 3, C, C)
        canvas = torch.where(mask[:, None], fill, canvas)
    small = F.adaptive_avg_pool2d(canvas, size)  # (N, 3, size, size)
    return (small * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_images(out: Path, count: int, seed: int, chunk: int = 1000) -> int:
    """Draw `count` images in seeded chunks (chunk k uses seed * 1_000_003 + k) and write them as PNGs."""
    steps = bar(range(0, count, chunk), desc="dead leaves")
    for start in steps:
        images = dead_leaves(min(chunk, count - start), seed * 1_000_003 + start // chunk)
        folder = out / f"{start:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{start + i:07d}.png")
    steps.close()
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write the PNGs into (created)")
    p.add_argument("--count", type=int, default=25000, help="images to draw")
    p.add_argument("--seed", type=int, default=0, help="the same seed draws the same images")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count {args.count}: use >= 1")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty: pass a new --out (its images would mix with these)")
    write_images(args.out, args.count, args.seed)
    logger.info(f"wrote {args.count:,} dead-leaves images (32x32 PNG, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
