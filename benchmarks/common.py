"""Shared helpers for the benchmark scripts: backbone sizes, prompt sets, the FLOP model, timing, tables.

Timing rule for every script: the variants being compared run interleaved (rounds of A B C, shuffled per round)
after a warm-up call each, so load from other processes on a shared machine hits all of them alike; a script
reports the best (or median) of its bounded repeats and the ratios between variants measured side by side in the
same run.

Clock: engine-level scripts default to `cpu`, the CPU time of this process (time.process_time). With one
torch thread it is the compute the call needed, and it does not count the time the scheduler gave the core to
other jobs, so it stays meaningful on a machine shared with training runs; on an idle core it equals the wall
time. `--clock wall` measures wall time (use it with --threads > 1, where CPU time adds up the threads).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import promptserve as ps  # noqa: E402
from promptserve.testing import random_backbone, random_images, random_prompt_set  # noqa: E402

# name -> (timm model, timm kwargs, label). Random weights: speed does not depend on them.
SIZES = {
    "demo": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, depth=6, num_classes=10),
             "demo-sized ViT-Ti (32 px, patch 4, 6 layers)"),
    "ti": ("vit_tiny_patch16_224", dict(num_classes=10), "ViT-Ti/16 at 224"),
    "b": ("vit_base_patch16_224", dict(num_classes=10), "ViT-B/16 at 224"),
}


def backbone(size: str, seed: int = 0) -> ps.Backbone:
    name, kwargs, _ = SIZES[size]
    return random_backbone(name, seed, **kwargs)


def prompt_sets(bb: ps.Backbone, n: int, visual: int | list[int] = 10, kv: int | list[int] = 10,
                classes: int = 10) -> list[ps.PromptSet]:
    """`n` valid, distinct prompt sets (random values) with the given per-layer lengths."""
    return [random_prompt_set(bb, visual=visual, kv=kv, classes=classes, seed=i) for i in range(n)]


def prompted_model(bb: ps.Backbone, sets: list[ps.PromptSet], prefix: str = "task") -> tuple[ps.PromptedViT,
                                                                                               list[str]]:
    model = ps.PromptedViT(bb)
    names = [f"{prefix}-{i}" for i in range(len(sets))]
    for name, s in zip(names, sets, strict=True):
        model.add_task(name, s)
    return model, names


def images(bb: ps.Backbone, n: int, seed: int = 0) -> torch.Tensor:
    return random_images(n, bb.data_config.input_size, seed)


# ---- the FLOP model ---------------------------------------------------------------------------------------
def vit_flops(bb: ps.Backbone, visual: int | list[int] = 0, kv: int | list[int] = 0, classes: int = 10) -> float:
    """Multiply-adds x 2 of one image through the (prompted) ViT. Per layer with T = N + M_i tokens (N = prefix
    + patches, M_i visual prompts) and T + P_i keys: qkv, proj and the MLP scale with T (2 T D (3D + D + 2 h)),
    attention with T (T + P_i) (2 x 2 T (T + P_i) D for QK^T and AV). Plus the patch embedding and the head;
    norms, softmax and GELU are not counted (they scale with T too)."""
    L, D = bb.num_layers, bb.embed_dim
    visual = [visual] * L if isinstance(visual, int) else visual
    kv = [kv] * L if isinstance(kv, int) else kv
    hidden = bb.model.blocks[0].mlp.fc1.out_features
    n, p = bb.num_prefix_tokens + bb.num_patches, bb.patch_size
    total = 2.0 * bb.num_patches * 3 * p * p * D + 2.0 * D * classes
    for m, k in zip(visual, kv, strict=True):
        t = n + m
        total += 2.0 * t * D * (3 * D + D + 2 * hidden) + 4.0 * t * (t + k) * D
    return total


# ---- timing -----------------------------------------------------------------------------------------------
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                budget_s: float | None = None, clock: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function on `clock`: `warmup` untimed rounds, then up to `repeats` interleaved
    rounds (every function once per round, in a new seeded random order each round, so that no variant always
    runs right after the same one), stopping early after a round once `budget_s` wall seconds have passed (at
    least one round runs). out[key][i] is round i's call of `key`, so rounds pair up (see paired_ratio)."""
    import random

    now, rng = CLOCKS[clock], random.Random(0)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for _ in range(repeats):
        order = list(fns)
        rng.shuffle(order)
        for key in order:
            t0 = now()
            fns[key]()
            out[key].append(now() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return out


def summary(samples: list[float], stat: str = "best") -> float:
    return min(samples) if stat == "best" else statistics.median(samples)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: each pair ran back to back in the same round, under the same load from
    other processes, so this is steadier on a shared machine than a ratio of two separate summaries."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def paired_spread(a: list[float], b: list[float]) -> str:
    """The paired ratio as 'median (q1-q3)': the quartiles of the per-round ratios show how far to trust it."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    if len(ratios) < 4:
        return f"{statistics.median(ratios):.3f} (n={len(ratios)})"
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:.3f} ({q1:.2f}-{q3:.2f})"


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def steady_malloc() -> bool:
    """Pin glibc malloc's thresholds (mmap 32 MiB, the most mallopt allows; trim 1 GiB) so freed activations are
    reused instead of being returned to the kernel and page-faulted in again on the next call. With glibc's
    dynamic default, how many pages a call faults in depends on which allocation sizes came before it, i.e. on
    the variant that ran before it in the round: a bias of several percent between interleaved variants.
    Returns False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def machine(malloc: str = "") -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load}, nice {os.nice(0)}"
            + (f", malloc: {malloc}" if malloc else ""))


def engine_setup(args) -> None:
    """Threads and allocator for the engine-level scripts (flags --threads, --default-malloc), then the
    machine line."""
    set_threads(args.threads)
    malloc = "glibc default" if args.default_malloc else (
        "pinned thresholds (steady_malloc)" if steady_malloc() else "default (steady_malloc unavailable)")
    print(machine(malloc), "\n")


def rounds_flags(parser, repeats: int) -> None:
    """--repeats, --budget and --stat of a script timing interleaved rounds (interleaved, summary), then
    engine_flags."""
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds after which no new round starts")
    parser.add_argument("--stat", choices=("best", "median"), default="median")
    engine_flags(parser)


def engine_flags(parser) -> None:
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="see benchmarks/common.py")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's dynamic malloc thresholds (see common.steady_malloc)")


def table(headers: list[str], rows: list[list], title: str = "") -> str:
    """A GitHub-markdown table (printable as is and pasteable into docs/performance.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"| {' | '.join(h.ljust(w) for h, w in zip(headers, widths, strict=True))} |",
             f"| {' | '.join('-' * w for w in widths)} |"]
    lines += [f"| {' | '.join(c.rjust(w) for c, w in zip(r, widths, strict=True))} |" for r in cells]
    text = "\n".join(([title, ""] if title else []) + lines)
    print(text + "\n", flush=True)
    return text


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 100 else f"{c:,.0f}"
    return str(c)


# ---- HTTP helpers (cold_load.py, serve_load.py) -----------------------------------------------------------
def encoded_image(size: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A random RGB image of `size` x `size` pixels, encoded (what a client uploads)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks stop the servers a script started (uvicorn, redis)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def wait_ready(url: str, timeout_s: float = 180.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll GET {url}/readyz until it answers 200 (bounded by `timeout_s` and by `alive()`)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready within {timeout_s:.0f} s")


def ms_stats(samples_s: list[float]) -> list[str]:
    """p50, p95, p99 in ms, formatted, from samples in seconds."""
    return [f"{1e3 * percentile(samples_s, q):,.1f}" for q in (50, 95, 99)]
