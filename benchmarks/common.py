"""Shared helpers for the benchmark scripts: backbone sizes, prompt sets, the FLOP model, timing, tables.

Timing rule for every script: the variants being compared run interleaved (rounds of A B C, shuffled per round)
after a warm-up call each, so load from other processes on a shared machine hits all of them alike; a script
reports the best (or median) of its bounded repeats and the ratios between variants measured side by side in the
same run.

Clock: engine-level scripts default to `cpu`, the CPU time of this process (time.process_time). With one
torch thread it is the compute the call needed, and it does not count the time the scheduler gave the core to
other jobs, so it stays meaningful on a machine shared with training runs; on an idle core it equals the wall
time. `--clock wall` measures wall time (use it with --threads > 1, where CPU time adds up the threads).

Record: every script runs inside `recorded(name)`, which writes what it printed, with the command, the date, the
machine's facts and what else used the CPU, to runs/bench/<name>.md; the docs quote only those files.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
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


def engine_setup(args) -> None:
    """Threads and allocator for the engine-level scripts (flags --threads, --default-malloc); says which
    allocator setting ran (the record's facts say the rest)."""
    set_threads(args.threads)
    malloc = "glibc default" if args.default_malloc else (
        "pinned thresholds (steady_malloc)" if steady_malloc() else "default (steady_malloc unavailable)")
    print(f"malloc: {malloc}\n")


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
    """A GitHub-markdown table, printed (and so in the run's record, see `recorded`)."""
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


# ---- the record of a run: runs/bench/<name>.md ---------------------------------------------------------------
BENCH_DIR = ROOT / "runs" / "bench"
BUSY = 0.05  # another process is named in a record when it used more than this share of one core during the run


@contextlib.contextmanager
def recorded(name: str, out: Path | None = None) -> Iterator[None]:
    """What the script prints inside this block is also written, when the block ends without an error, to
    runs/bench/<name>.md (or `out`): the exact command, the date, the machine's facts and what else used the
    CPU meanwhile, then the output. docs/performance.md and the README quote these files
    (tools/perf_summary.py), never a table pasted by hand. A run that fails leaves the previous record."""
    command, started, load_before, cpu_before = run_command(), time.time(), os.getloadavg(), cpu_by_process()
    print(f"{command}\n(recorded to {(out or BENCH_DIR / f'{name}.md').relative_to(ROOT)} when it ends)\n", flush=True)
    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        yield
    lines = [f"Command: `{command}`", "", *machine_facts(started, load_before, busy_beside(cpu_before, started)),
             "", "```text", captured.getvalue().strip("\n"), "```", ""]
    path = out or BENCH_DIR / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:  # progress bars and libraries that write to the descriptor see the terminal
        return self.streams[0].isatty()

    def fileno(self) -> int:
        return self.streams[0].fileno()


def run_command() -> str:
    """This run as one shell line: its niceness, the interpreter and the script relative to the repository, the
    arguments as given."""
    def short(path: str) -> str:
        return str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path

    niceness = os.nice(0)
    return shlex.join([*(["nice", "-n", str(niceness)] if niceness else []), short(sys.executable),
                       short(str(Path(sys.argv[0]).resolve())), *sys.argv[1:]])


def machine_facts(started: float, load_before: tuple[float, ...], beside: list[str]) -> list[str]:
    """The facts a reader needs to weigh the numbers: the CPU as /proc/cpuinfo names it (platform.processor()
    says only x86_64) with its vector and matrix flags, the software, the threads, and the load."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(key: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith(key)), "")

    flags = [f for f in field("flags").split() if f.startswith(("avx", "amx"))]
    try:
        openvino = f"OpenVINO {metadata.version('openvino')}"
    except metadata.PackageNotFoundError:
        openvino = "no OpenVINO"

    def loads(values) -> str:
        return " ".join(f"{x:.2f}" for x in values)

    return [f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {time.time() - started:.0f} s wall",
            f"- CPU: {field('model name') or platform.machine()}, {os.cpu_count()} cores; flags: "
            f"{' '.join(flags) or 'no avx/amx'}; torch's CPU capability {torch.backends.cpu.get_cpu_capability()}",
            f"- torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) in this process, {openvino}, "
            f"Python {platform.python_version()}, nice {os.nice(0)}",
            f"- code: {code_version()}",
            f"- load average (1, 5, 15 min): {loads(load_before)} before, {loads(os.getloadavg())} after",
            f"- beside it (other processes, share of one core over the run): {'; '.join(beside) or 'none above 5%'}"]


def code_version() -> str:
    """The commit measured, and where the working tree differed from it (a shared checkout often does)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown (no git)"
    status = git("status", "--porcelain", "--untracked-files=no")
    if not status:  # clean, or git could not say (a colleague's commit holding the index lock, say)
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode == 0
        return f"commit {commit}" + ("" if clean else ", with uncommitted changes (git status could not list them)")
    changed = sorted({line[3:].split("/")[0] + ("/" if "/" in line[3:] else "") for line in status.splitlines()})
    return f"commit {commit}, with uncommitted changes in {', '.join(changed)}"


def cpu_by_process() -> dict[int, tuple[str, int, float]]:
    """pid -> (what it runs, its niceness, CPU seconds so far), for every process that can be read."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline", "nice", "cpu_times"]):
        times = p.info["cpu_times"]
        if times is not None:
            out[p.pid] = (_label(p.info["cmdline"] or [p.info["name"] or "?"]), p.info["nice"] or 0,
                          times.user + times.system)
    return out


def busy_beside(before: dict[int, tuple[str, int, float]], started: float) -> list[str]:
    """The other processes that used more than BUSY of a core since `before`, busiest first (this process and
    its children, e.g. a server it started, are not 'beside' it)."""
    import psutil

    ours = {os.getpid(), *(child.pid for child in psutil.Process().children(recursive=True))}
    seconds = time.time() - started
    use: dict[tuple[str, int], float] = {}
    for pid, (label, niceness, cpu) in cpu_by_process().items():
        if pid not in ours:
            use[label, niceness] = use.get((label, niceness), 0.0) + cpu - before.get(pid, (label, 0, 0.0))[2]
    busy = sorted(((share, key) for key, cpu in use.items() if (share := cpu / seconds) > BUSY), reverse=True)
    return [f"`{label}` (nice {niceness}) {100 * share:.0f}%" for share, (label, niceness) in busy]


def _label(cmdline: list[str]) -> str:
    """A process's program and its first words, without paths or any flag's value (which may be a secret)."""
    words = [Path(cmdline[0]).name]
    for word in cmdline[1:4]:
        if word.startswith("--"):
            break
        words.append(Path(word).name if "/" in word else word)
    return " ".join(words)[:60]


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


def served_precision(url: str) -> str:
    """What a running server computes in, from its /readyz (e.g. 'float32 on torch'): `dtype: auto` may pick
    bfloat16 where the CPU runs it natively, so a record must say which one was measured."""
    import httpx

    ready = httpx.get(f"{url}/readyz", timeout=10.0).json()
    return f"{ready['dtype']} on {ready.get('backend') or 'torch'}"


def ms_stats(samples_s: list[float]) -> list[str]:
    """p50, p95, p99 in ms, formatted, from samples in seconds."""
    return [f"{1e3 * percentile(samples_s, q):,.1f}" for q in (50, 95, 99)]
