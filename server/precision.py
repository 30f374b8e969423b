"""`dtype: auto` and `backend: auto`: at start-up, on the real backbone and the registry's tasks, time each
(precision, backend) pair allowed (the precisions the hardware runs natively, promptserve.hardware; the backends
installed for the device, promptserve.backends) against float32 torch in paired rounds, and keep the fastest that
is really faster than the fallback and agrees with float32 torch on real images; otherwise the fallback: float32
torch, or the setting that is not auto. The choice, the speed-ups and the agreements are logged and shown by
/readyz, so a deployment can see why it runs what it runs.

Probe images (the accuracy guard) come from `probe_dir` (any folder of images), else from the demo tasks'
example images when that folder has them (`python -m server.web.examples`). Without real images nothing can
show that another precision or backend answers like float32 torch, so auto keeps the fallback and says so.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from promptserve.backends import Backend, backends_for, open_backend
from promptserve.hardware import native_dtypes
from promptserve.preprocess import image_to_uint8, normalise

log = logging.getLogger("promptserve.server")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_AGREEMENT = 0.99  # top-1 agreement with float32 torch on the probe images
MIN_SPEEDUP = 1.05  # "faster" means clearly faster: timing noise must not flip a deployment to another path
PROBE_LIMIT = 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class Candidate(NamedTuple):
    """A way to run the forward: a precision on a backend."""

    dtype: str
    backend: str = "torch"

    def __str__(self) -> str:
        return self.dtype if self.backend == "torch" else f"{self.dtype} on {self.backend}"


REFERENCE = Candidate("float32", "torch")  # what every speed-up and agreement is measured against


def candidates(device: torch.device, dtype: str = "auto", backend: str = "auto") -> list[Candidate]:
    """What start-up chooses from, the fallback first (what runs unless another is faster and agrees): float32
    torch, or the setting that is not auto. auto allows what this device runs: the native precisions, the
    installed backends."""
    fallback = Candidate("float32" if dtype == "auto" else dtype, "torch" if backend == "auto" else backend)
    dtypes = native_dtypes(device) if dtype == "auto" else [dtype]
    backends = backends_for(device) if backend == "auto" else [backend]
    return [fallback, *(c for b in backends for d in dtypes if (c := Candidate(d, b)) != fallback)]


@dataclass
class Trial:
    dtype: str
    backend: str = "torch"
    speedup: float | None = None  # median over rounds of float32 torch's time / this one's, same batch
    agreement: float | None = None  # top-1 agreement with float32 torch on the probe images
    kept: bool = False
    why: str = ""

    def __str__(self) -> str:
        return str(Candidate(self.dtype, self.backend))


@dataclass
class Choice:
    dtype: str
    backend: str
    probe_images: int
    trials: list[Trial] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "backend": self.backend, "probe_images": self.probe_images,
                "trials": [asdict(t) for t in self.trials]}


def choose(options: list[Candidate], speedups: Callable[[list[Candidate]], dict[Candidate, float]],
           agreement: Callable[[Candidate], float], probe_images: int) -> Choice:
    """The decision, apart from any model. options: the fallback first (`candidates`); `speedups(options)` ->
    paired speed-up of each over float32 torch, `agreement(option)` -> top-1 agreement with float32 torch.
    Another option is kept only when it is MIN_SPEEDUP times faster than the fallback and agrees. Unit-tested
    with fakes."""
    fallback, others = options[0], options[1:]
    first = Trial(*fallback, why="the setting")
    if fallback == REFERENCE:
        first.speedup, first.agreement, first.why = 1.0, 1.0, "the reference"
    if not others:
        first.kept = True
        first.why = "nothing else to try: no other precision runs natively here, no other backend is installed"
        return Choice(*fallback, probe_images, [first])
    if probe_images == 0:
        first.kept, first.why = True, "no probe images to check the others against (set probe_dir)"
        return Choice(*fallback, probe_images, [first, *(Trial(*o, why="not tried: no probe images")
                                                         for o in others)])
    measured = speedups([o for o in options if o != REFERENCE])
    first.speedup = round(measured.get(fallback, 1.0), 3)
    needed = MIN_SPEEDUP * first.speedup
    trials = [first]
    for option in others:
        trial = Trial(*option, speedup=round(measured[option], 3))
        if trial.speedup is not None and trial.speedup < needed:
            trial.why = f"not faster: {trial.speedup:.2f}x float32 (needs >= {needed:.2f})"
        else:
            trial.agreement = round(agreement(option), 4)
            if trial.agreement < MIN_AGREEMENT:
                trial.why = f"top-1 agreement with float32 {trial.agreement:.2%} < {MIN_AGREEMENT:.0%}"
        trials.append(trial)
    passing = [t for t in trials[1:] if not t.why]
    best = max(passing, key=lambda t: t.speedup or 0.0, default=first)
    for t in passing:
        t.why = "fastest that agrees with float32" if t is best else f"agrees, but {best} is faster"
    best.kept = True
    if best is first:
        best.why = "nothing else is both faster and in agreement"
    else:
        first.why = f"{best} is {best.speedup / first.speedup:.2f}x faster and agrees"
    return Choice(best.dtype, best.backend, probe_images, trials)


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
                 batch: int = 32, dtype: str = "auto", backend: str = "auto") -> Choice:
    """Time and check the `candidates` for the settings `dtype` and `backend` on `backbone` with `tasks`
    ({name: PromptSet}) and probe `images`."""
    options = candidates(device, dtype, backend)
    runners: dict[Candidate, Backend] = {}

    def runner(option: Candidate) -> Backend:
        if option not in runners:  # a half precision on torch casts a copy of the weights
            runners[option] = open_backend(option.backend, backbone, device, DTYPES[option.dtype])
            for task, ps in tasks.items():
                runners[option].model.add_task(task, ps)
        return runners[option]

    names = sorted(tasks)
    x_all = normalise(images, backbone.data_config) if len(images) else None  # (N, 3, S, S)
    assigned = [names[i % len(names)] for i in range(len(images))]

    def logits(option: Candidate, x: torch.Tensor, which: list[str]) -> torch.Tensor:
        out = runner(option)(x.to(device), which)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.float().cpu()

    def speedups(others: list[Candidate]) -> dict[Candidate, float]:
        x, which = x_all[:batch], assigned[:batch]
        timed = [REFERENCE, *others]
        for option in timed:
            logits(option, x, which)  # warm-up (allocations, kernel selection, a compiled graph)
        ratios: dict[Candidate, list[float]] = {o: [] for o in others}
        deadline = time.monotonic() + budget_s
        for _ in range(20):
            order = list(timed)
            random.shuffle(order)  # paired rounds in a shuffled order: a load spike hits a round, not a variant
            spent = {}
            for option in order:
                t0 = time.perf_counter()
                logits(option, x, which)
                spent[option] = time.perf_counter() - t0
            for o in others:
                ratios[o].append(spent[REFERENCE] / spent[o])
            if time.monotonic() > deadline and len(ratios[others[0]]) >= 3:
                break
        return {o: statistics.median(r) for o, r in ratios.items()}

    reference: list[torch.Tensor] = []

    def top1(option: Candidate) -> torch.Tensor:
        return torch.cat([logits(option, x_all[i:i + batch], assigned[i:i + batch]).argmax(1)
                          for i in range(0, len(images), batch)])

    def agreement(option: Candidate) -> float:
        if not reference:
            reference.append(top1(REFERENCE))
        return float((top1(option) == reference[0]).float().mean())

    choice = choose(options, speedups, agreement, len(images) if names else 0)
    for t in choice.trials:
        log.info("%s auto: %s %s%s%s - %s", "dtype" if dtype == "auto" else "backend", t,
                 "kept" if t.kept else "dropped", f", {t.speedup:.2f}x float32" if t.speedup is not None else "",
                 f", agreement {t.agreement:.2%}" if t.agreement is not None else "", t.why)
    return choice
