"""`dtype: auto`: at start-up, on the real backbone and the registry's tasks, time the precisions the hardware runs
natively (promptserve.hardware) against float32 in paired rounds, and keep the fastest that is really faster and
agrees with float32 on real images; otherwise float32. The choice, the speed-ups and the agreements are logged and
shown by /readyz, so a deployment can see why it runs what it runs.

Probe images (the accuracy guard) come from `probe_dir` (any folder of images), else from the demo tasks'
example images when that folder has them (`python -m server.web.examples`). Without real images nothing can
show that a half precision answers like float32, so auto keeps float32 and says so.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from promptserve.hardware import native_dtypes
from promptserve.model import PromptedViT
from promptserve.preprocess import image_to_uint8, normalise

log = logging.getLogger("promptserve.server")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_AGREEMENT = 0.99  # top-1 agreement with float32 on the probe images
MIN_SPEEDUP = 1.05  # "faster" means clearly faster: timing noise must not flip a deployment to half precision
PROBE_LIMIT = 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass
class Trial:
    dtype: str
    speedup: float | None = None  # median over rounds of float32 time / this dtype's time, same batch
    agreement: float | None = None  # top-1 agreement with float32 on the probe images
    kept: bool = False
    why: str = ""


@dataclass
class Choice:
    dtype: str
    probe_images: int
    trials: list[Trial] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "probe_images": self.probe_images, "trials": [asdict(t) for t in self.trials]}


def choose(candidates: list[str], speedups: Callable[[list[str]], dict[str, float]],
           agreement: Callable[[str], float], probe_images: int) -> Choice:
    """The decision, apart from any model: `speedups(names)` -> paired speed-up of each over float32,
    `agreement(name)` -> top-1 agreement with float32. Unit-tested with fakes."""
    others = [c for c in candidates if c != "float32"]
    trials = [Trial("float32", 1.0, 1.0, why="the reference")]
    if not others:
        trials[0].kept, trials[0].why = True, "no half precision runs natively on this device"
        return Choice("float32", probe_images, trials)
    if probe_images == 0:
        trials[0].kept, trials[0].why = True, "no probe images to check half precision against (set probe_dir)"
        return Choice("float32", probe_images, trials + [Trial(o, why="not tried: no probe images") for o in others])
    measured = speedups(others)
    for name in others:
        trial = Trial(name, round(measured[name], 3))
        if trial.speedup is not None and trial.speedup < MIN_SPEEDUP:
            trial.why = f"not faster: {trial.speedup:.2f}x float32 (needs >= {MIN_SPEEDUP})"
        else:
            trial.agreement = round(agreement(name), 4)
            if trial.agreement < MIN_AGREEMENT:
                trial.why = f"top-1 agreement with float32 {trial.agreement:.2%} < {MIN_AGREEMENT:.0%}"
        trials.append(trial)
    passing = [t for t in trials[1:] if not t.why]
    best = max(passing, key=lambda t: t.speedup or 0.0, default=trials[0])
    for t in passing:
        t.why = "fastest that agrees with float32" if t is best else f"agrees, but {best.dtype} is faster"
    best.kept = True
    if best is trials[0]:
        best.why = "no half precision is both faster and in agreement"
    else:
        trials[0].why = f"{best.dtype} is {best.speedup:.2f}x faster and agrees"
    return Choice(best.dtype, probe_images, trials)


def probe_images(folder: str | Path | None, size: int, interpolation: str) -> np.ndarray:
    """(N, S, S, 3) uint8 from a folder of images (searched recursively, sorted, at most PROBE_LIMIT)."""
    if folder is None or not Path(folder).is_dir():
        return np.zeros((0, size, size, 3), np.uint8)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:PROBE_LIMIT]
    images = []
    for path in files:
        try:
            images.append(image_to_uint8(path, size, interpolation))
        except (OSError, ValueError) as e:
            log.warning("probe image %s skipped: %s", path.name, e)
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def decide_dtype(backbone, device: torch.device, tasks: dict, images: np.ndarray, budget_s: float = 3.0,
                 batch: int = 32) -> Choice:
    """Time and check the native candidates on `backbone` with `tasks` ({name: PromptSet}) and probe `images`."""
    candidates = native_dtypes(device)
    models: dict[str, PromptedViT] = {}

    def model(name: str) -> PromptedViT:
        if name not in models:  # each half precision gets its own copy of the weights: a cast is in place
            models[name] = PromptedViT(backbone if name == "float32" else backbone.clone(), device=device,
                                       dtype=DTYPES[name])
            for task, ps in tasks.items():
                models[name].add_task(task, ps)
        return models[name]

    names = sorted(tasks)
    x_all = normalise(images, backbone.data_config) if len(images) else None  # (N, 3, S, S)
    assigned = [names[i % len(names)] for i in range(len(images))]

    def logits(name: str, x: torch.Tensor, which: list[str]) -> torch.Tensor:
        out = model(name)(x.to(device), which)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.float().cpu()

    def speedups(others: list[str]) -> dict[str, float]:
        x, which = x_all[:batch], assigned[:batch]
        for name in ["float32", *others]:
            logits(name, x, which)  # warm-up (allocations, kernel selection)
        ratios: dict[str, list[float]] = {o: [] for o in others}
        deadline = time.monotonic() + budget_s
        for _ in range(20):
            order = ["float32", *others]
            random.shuffle(order)  # paired rounds in a shuffled order: a load spike hits a round, not a variant
            spent = {}
            for name in order:
                t0 = time.perf_counter()
                logits(name, x, which)
                spent[name] = time.perf_counter() - t0
            for o in others:
                ratios[o].append(spent["float32"] / spent[o])
            if time.monotonic() > deadline and len(ratios[others[0]]) >= 3:
                break
        return {o: statistics.median(r) for o, r in ratios.items()}

    reference: dict[str, torch.Tensor] = {}

    def agreement(name: str) -> float:
        if "float32" not in reference:
            reference["float32"] = torch.cat([logits("float32", x_all[i:i + batch], assigned[i:i + batch]).argmax(1)
                                              for i in range(0, len(images), batch)])
        top1 = torch.cat([logits(name, x_all[i:i + batch], assigned[i:i + batch]).argmax(1)
                          for i in range(0, len(images), batch)])
        return float((top1 == reference["float32"]).float().mean())

    choice = choose(candidates, speedups, agreement, len(images) if names else 0)
    for t in choice.trials:
        log.info("dtype auto: %s %s%s%s - %s", t.dtype, "kept" if t.kept else "dropped",
                 f", {t.speedup:.2f}x float32" if t.speedup is not None else "",
                 f", agreement {t.agreement:.2%}" if t.agreement is not None else "", t.why)
    return choice
