"""A frozen ImageNet teacher (a TensorFlow Lite embedding model) and the cache of its answers on fixed views.

Distillation (training/distill.py) is function matching on a fixed set of views: for every training image,
`views` augmented 32x32 images (random-resized crop, flip, and with probability `mix` a mixup with another
image's view) are drawn once from a seeded generator, and the teacher embeds each view upsampled to its
input size. The student later sees exactly those pixels, so student and teacher always answer the same
image (Beyer et al. 2022, "a good teacher is patient and consistent"), while the teacher's cost (about
5 ms a view on two cores) is paid once, not every epoch.

The cache lives in `<dir>/view-<k>.npz` (uint8 views, uint8 embeddings, the two labels and the mixing
weight of each view), one file per view set, written atomically: an interrupted build resumes at the first
missing file, and a cache rebuilt on another machine from the same seed and teacher holds the same views.
The teacher is a training-time dependency only (the `[distill]` extra): serving never imports this module.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptserve.files import atomic_target
from training.progress import bar

logger = logging.getLogger(__name__)

MISSING_RUNTIME = "the teacher needs ai-edge-litert: pip install 'promptserve[distill]'"


class TeacherError(ValueError):
    """A teacher file that cannot be used; the message says what to fix."""


class Teacher:
    """A TFLite image model: (N, S, S, 3) uint8 RGB -> (N, D) float32 embedding (dequantised)."""

    def __init__(self, path: str | Path, threads: int = 2, batch: int = 16):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise TeacherError(MISSING_RUNTIME) from e
        path = Path(path)
        if not path.is_file():
            raise TeacherError(f"teacher file {path} does not exist (../shared/teachers/ has two)")
        self.path = path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            self._it = Interpreter(model_path=str(path), num_threads=max(1, threads))
        except ValueError as e:
            raise TeacherError(f"{path} is not a TensorFlow Lite model: {e}") from e
        inp = self._it.get_input_details()[0]
        if len(inp["shape"]) != 4 or inp["shape"][3] != 3 or inp["dtype"] != np.uint8:
            raise TeacherError(f"{path}: input {inp['shape']} {inp['dtype']}; a uint8 (1, S, S, 3) image model "
                               "is expected")
        self.input_size = int(inp["shape"][1])
        self.batch = batch
        self._it.resize_tensor_input(inp["index"], [batch, self.input_size, self.input_size, 3])
        self._it.allocate_tensors()
        self._in = inp["index"]
        out = self._it.get_output_details()[0]
        self._out = out["index"]
        self.scale, self.zero_point = out["quantization"] if out["quantization"][0] else (1.0, 0)
        self.dim = int(np.prod(out["shape"][1:]))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, s, s, 3) uint8 at any size -> (N, D) float32. Images are upsampled bilinearly to the
        teacher's input size: it sees the student's own pixels, only bigger."""
        n = len(images)
        out = np.empty((n, self.dim), np.float32)
        for i in range(0, n, self.batch):
            chunk = upsample(images[i:i + self.batch], self.input_size)
            k = len(chunk)
            if k < self.batch:  # the interpreter's batch is fixed: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self.batch - k, *chunk.shape[1:]), np.uint8)])
            self._it.set_tensor(self._in, chunk)
            self._it.invoke()
            raw = self._it.get_tensor(self._out).reshape(self.batch, self.dim)[:k]
            out[i:i + k] = (raw.astype(np.float32) - self.zero_point) * self.scale
        return out


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, s, s, 3) uint8 -> (N, size, size, 3) uint8, bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ---- the fixed views ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewRecipe:
    """How one view set is drawn: crop scale range, flip, mixup probability; seeded per view set."""

    seed: int = 0
    min_scale: float = 0.35  # random-resized crop keeps this fraction of the area at least
    mix: float = 0.5  # probability that a view is mixed with another image's view (weight ~ U(0, 1))

    def key(self) -> str:
        return f"rrc{self.min_scale:g}-flip-mix{self.mix:g}-seed{self.seed}"


def draw_views(images: np.ndarray, labels: np.ndarray, k: int, recipe: ViewRecipe
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """View set k of (N, S, S, 3) uint8 images: views (N, S, S, 3) uint8, label_a (N,), label_b (N,),
    weight (N,) float32 (the view is weight * image_a + (1 - weight) * image_b; weight 1: not mixed)."""
    gen = torch.Generator().manual_seed(recipe.seed * 100_003 + k)
    n, s = len(images), images.shape[1]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (N, 3, S, S)
    x = _resized_crops(x, recipe.min_scale, gen)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    partner = torch.randperm(n, generator=gen)
    mixed = torch.rand(n, generator=gen) < recipe.mix
    weight = torch.where(mixed, torch.rand(n, generator=gen), torch.ones(n))
    x = weight[:, None, None, None] * x + (1 - weight[:, None, None, None]) * x[partner]
    views = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    assert views.shape == (n, s, s, 3)
    label_b = np.where(mixed.numpy(), labels[partner.numpy()], labels)
    return views, labels.copy(), label_b, weight.numpy().astype(np.float32)


def _resized_crops(x: torch.Tensor, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """Random-resized crop of every image of (N, 3, S, S), area in [min_scale, 1], aspect in [3/4, 4/3], back
    to S x S (bilinear sampling of the crop box)."""
    n, _, s, _ = x.shape
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    log_ratio = (torch.rand(n, generator=gen) * 2 - 1) * np.log(4 / 3)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # width and height as fractions of the side
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1] coordinates
    cy = (torch.rand(n, generator=gen) * (1 - h) + h / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def view_file(cache: Path, k: int) -> Path:
    return cache / f"view-{k}.npz"


def check_view_cache(cache: str | Path, teacher: Teacher, images: np.ndarray, labels: np.ndarray,
                     recipe: ViewRecipe) -> Path:
    """Create or check the cache folder: a cache made by another teacher, recipe or image set is refused
    rather than mixed in."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp = {"teacher": teacher.sha256, "recipe": recipe.key(), "images": image_digest(images, labels)}
    stamp_file = cache / "stamp.txt"
    text = "\n".join(f"{k}={v}" for k, v in stamp.items()) + "\n"
    if stamp_file.exists() and stamp_file.read_text() != text:
        raise TeacherError(f"{cache} holds views of another teacher, recipe or image set ({stamp_file}): "
                           "pass another --cache directory or delete it")
    stamp_file.write_text(text)
    return cache


def ensure_view_set(cache: Path, teacher: Teacher, images: np.ndarray, labels: np.ndarray, k: int,
                    recipe: ViewRecipe, log=logger.info, chunk: int = 2048) -> Path:
    """View set k's file, drawn and embedded (with a progress bar) if it is missing. Call check_view_cache
    first. Sets are built when first needed, so a run's first epochs start before all are made."""
    path = view_file(cache, k)
    if path.exists():
        return path
    t0 = time.time()
    v, la, lb, w = draw_views(images, labels, k, recipe)
    emb = np.empty((len(v), teacher.dim), np.float32)
    steps = bar(range(0, len(v), chunk), desc=f"teacher, view set {k + 1}")
    for i in steps:
        emb[i:i + chunk] = teacher.embed(v[i:i + chunk])
    steps.close()
    with atomic_target(path) as tmp:
        np.savez(tmp, views=v, embeddings=emb.astype(np.float16), label_a=la, label_b=lb, weight=w)
    log(f"[teacher] view set {k + 1}: {len(v):,} views embedded in {time.time() - t0:.0f} s -> {path}")
    return path


def load_views(cache: str | Path, k: int) -> dict[str, np.ndarray]:
    with np.load(view_file(Path(cache), k), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def image_digest(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()[:16]
