"""Does the HTTP request path carry the engine's gain? Two demo servers, one on the defaults (`--dtype auto
--backend auto`), one on `--dtype float32 --backend torch`, loaded in turn in paired, interleaved rounds.

    python benchmarks/http_precision.py                          # 32-image and 1-image requests, 6 rounds
    python benchmarks/http_precision.py --rounds 10 --seconds 6 --profile-seconds 20

Both servers serve the demo backbone (server.settings.DEMO_BACKBONE) and the demo tasks (a LocalStore in a temp dir
seeded from server.settings.DEMO_TASKS_DIR), with the same settings apart from dtype and backend: 1 torch thread
(one core for the forward, the other for the event loop, decoding and this client), max batch 32, max wait 5 ms.
The images are the demo tasks' example images (JPEG and PNG, 28-128 px), sent to a random demo task.
This process is the client (serve_load.py's asyncio client): per round and request size, each server in a shuffled
order gets `--seconds` of load (32-image multipart `files` requests at concurrency 4, or 1-image raw-body requests
at concurrency 64: both keep batches full); the other server is idle meanwhile. A round's ratio is default / float32
of the images answered per second; the table gives the median and quartiles over rounds, and beside them the
engine-only ratio of the same two paths (the forward of a batch of 32 over the demo tasks in this process, 1
thread, paired rounds between the HTTP rounds), i.e. what the request path could carry at most.
CPU ms per image: the server process's CPU time over the images it answered (what the request path costs beside
the forward). With `--profile-seconds`, py-spy samples the default server under each load, and the kernel's CPU time
of each server thread is split in the proportions of that thread's samples (py-spy cannot always tell a thread
waiting in C, a pool thread on its queue or uvloop polling, from one that works, so its counts alone overstate busy
threads; a thread waiting for the GIL is sampled where it waits): CPU ms per image by where it went (the forward,
assembling batches, decoding, multipart parsing, responses, routes and middleware, the event loop).
Target (issue 22): default / float32 >= 1.8 over HTTP on a CPU with native bf16.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import common as c
import serve_load as sl
import torch

SIZES = {32: 4, 1: 64}  # images per request -> concurrency (enough requests in flight to fill batches of 32)
PATHS = {"default": ("auto", "auto"), "float32": ("float32", "torch")}


def example_images() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, content type) of the demo tasks' example images."""
    from server.settings import DEMO_TASKS_DIR

    types = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
    files = sorted(p for p in Path(DEMO_TASKS_DIR, "examples").rglob("*") if p.suffix.lower() in types)
    return [(p.name, p.read_bytes(), types[p.suffix.lower()]) for p in files]


def multipart(images: list[tuple[str, bytes, str]], count: int) -> tuple[bytes, str]:
    """A multipart/form-data body with `count` `files` parts (the examples, cycled) and its Content-Type."""
    boundary = "promptserve-bench-boundary"
    body = b""
    for i in range(count):
        name, data, ctype = images[i % len(images)]
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class EngineRatio:
    """The forward alone: the default server's path against float32 torch, batch 32 over the demo tasks."""

    def __init__(self, dtype: str, backend: str, batch: int = 32):
        import promptserve as ps
        from promptserve.backends import open_backend
        from server.precision import DTYPES
        from server.settings import DEMO_BACKBONE, DEMO_TASKS_DIR

        sets = {p.stem: ps.PromptSet.load(p.read_bytes()) for p in sorted(Path(DEMO_TASKS_DIR).glob("*.safetensors"))}
        self.paths = {"default": open_backend(backend, ps.Backbone.from_file(DEMO_BACKBONE), "cpu", DTYPES[dtype]),
                      "float32": open_backend("torch", ps.Backbone.from_file(DEMO_BACKBONE), "cpu", torch.float32)}
        for path in self.paths.values():
            for name, s in sets.items():
                path.model.add_task(name, s)
        self.x = c.images(self.paths["float32"].model.backbone, batch)
        rng = random.Random(0)
        self.tasks = [rng.choice(sorted(sets)) for _ in range(batch)]

    def times(self, repeats: int) -> dict[str, list[float]]:
        return c.interleaved({k: lambda p=p: p(self.x, self.tasks) for k, p in self.paths.items()}, repeats,
                             warmup=1, clock="wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="load per server, request size and round")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--profile-seconds", type=float, default=0.0,
                        help="then py-spy the default server this long under each request size (0: no profile)")
    parser.add_argument("--record", default="http_precision", help="runs/bench/<this>.md")
    args = parser.parse_args()
    with c.recorded(args.record):
        measure(args)


def measure(args) -> None:
    from server.settings import DEMO_BACKBONE, DEMO_TASKS_DIR
    from tests.store_utils import free_port

    c.exit_on_sigterm()
    torch.set_num_threads(1)
    images = example_images()
    bodies = {n: multipart(images, n) if n > 1 else (images[0][1], images[0][2]) for n in args.sizes}
    tasks = sorted(p.stem for p in Path(DEMO_TASKS_DIR).glob("*.safetensors"))
    with tempfile.TemporaryDirectory(prefix="http-precision-") as tmp_name:
        tmp = Path(tmp_name)
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for key, (dtype, backend) in PATHS.items():
                port = free_port()
                servers[key] = (sl.start_server(Path(DEMO_BACKBONE), tmp / key, port, tmp / f"{key}.log", 32, 5.0,
                                                dtype=dtype, backend=backend, extra=("--seed-demo",)),
                                f"http://127.0.0.1:{port}")
            for server, url in servers.values():
                c.wait_ready(url, alive=lambda s=server: s.poll() is None)
            served = {key: c.served_precision(url) for key, (_, url) in servers.items()}
            print("servers: " + "; ".join(f"{k}: {v}" for k, v in served.items()) + " (from /readyz)\n")
            dtype, backend = served["default"].split(" on ")
            engine = EngineRatio(dtype, backend)
            rows = run_rounds(args, servers, bodies, tasks, engine)
            c.table(["images per request", "concurrency", "default img/s (median)", "float32 img/s (median)",
                     "default / float32 (q1-q3)", "engine default / float32 (q1-q3)", "default CPU ms/img",
                     "float32 CPU ms/img", "default mean batch", "errors"], rows,
                    f"### HTTP throughput, default ({served['default']}) vs float32 torch, demo backbone, demo "
                    f"tasks, {args.rounds} paired rounds of {args.seconds:g} s per server")
            print("target: default / float32 >= 1.8 on a CPU with native bf16 (issue 22)\n")
            if args.profile_seconds:
                server, url = servers["default"]
                profile_table(server.pid, args.profile_seconds, {
                    n: lambda n=n: asyncio.run(sl.load(url, SIZES[n], 10**9, args.profile_seconds - 1,
                                                       bodies[n][0], tasks, None, 0, bodies[n][1]))
                    for n in args.sizes})
        finally:
            for server, _ in servers.values():
                sl.stop_server(server)


def run_rounds(args, servers: dict, bodies: dict, tasks: list[str], engine: EngineRatio) -> list[list]:
    rates: dict[tuple[int, str], list[float]] = {(n, k): [] for n in args.sizes for k in servers}
    cpu: dict[tuple[int, str], list[float]] = {key: [] for key in rates}
    batches: dict[int, list[float]] = {n: [] for n in args.sizes}
    errors = dict.fromkeys(args.sizes, 0)
    engine_times: dict[str, list[float]] = {k: [] for k in servers}
    rng = random.Random(0)
    for n in args.sizes:  # warm-up: connections, the first batches, an OpenVINO variant for each batch size seen
        for _, url in servers.values():
            asyncio.run(sl.load(url, SIZES[n], 10**9, 2.0, bodies[n][0], tasks, None, 0, bodies[n][1]))
    for r in range(args.rounds):
        for n in args.sizes:
            order = list(servers)
            rng.shuffle(order)
            for key in order:
                server, url = servers[key]
                hist, cpu0 = sl.batch_histogram(url), sl.cpu_seconds(server.pid)
                out = asyncio.run(sl.load(url, SIZES[n], 10**9, args.seconds, bodies[n][0], tasks, None, r,
                                          bodies[n][1]))
                answered = len(out["latencies"])
                rates[n, key].append(answered / out["elapsed"])
                cpu[n, key].append((sl.cpu_seconds(server.pid) - cpu0) / max(answered, 1))
                errors[n] += sum(k for s, k in out["statuses"].items() if s != 200)
                if key == "default":
                    batches[n].append(sl.histogram_text(hist, sl.batch_histogram(url))[1])
        for k, t in engine.times(3).items():
            engine_times[k] += t
        ratios = (f"{n} img/request {rates[n, 'default'][-1] / rates[n, 'float32'][-1]:.2f}x" for n in args.sizes)
        print(f"  round {r + 1}: " + ", ".join(ratios), flush=True)
    engine_ratio = c.paired_spread(engine_times["float32"], engine_times["default"])
    return [[n, SIZES[n], f"{statistics.median(rates[n, 'default']):,.0f}",
             f"{statistics.median(rates[n, 'float32']):,.0f}",
             c.paired_spread(rates[n, "default"], rates[n, "float32"]), engine_ratio,
             f"{1e3 * statistics.median(cpu[n, 'default']):.2f}", f"{1e3 * statistics.median(cpu[n, 'float32']):.2f}",
             f"{statistics.median(batches[n]):.1f}", errors[n]] for n in args.sizes]


# ---- the profile (--profile-seconds) ---------------------------------------------------------------------------
# first rule with a frame in the stack wins (so the forward traced inside a compile counts as compiling)
CATEGORIES = [
    ("compiling OpenVINO shape variants", ("OpenVINOBackend._variant ",)),
    ("forward (OpenVINO infer, torch forward)", ("InferRequest.infer ", "PromptedViT.forward_batch ")),
    ("batch assembly and results (gather, padding, normalise, top-k)", ("Engine._forward ",)),
    ("image probe and decode", ("decode_probed ", "probe_image ", "_decode_all ")),
    ("decode pool hand-offs (submit, futures, callbacks)", ("FairDecoder.run",)),
    ("multipart parsing", ("Request._get_form ",)),
    ("response (models, JSON)", ("serialize_response ", "_answer ")),
    ("batcher and engine hand-offs (queue, futures)", ("Batcher.", "Engine.run_batch ", "_chain_future")),
    ("routes, dependencies, middleware, uvicorn (Python)", (
        "FastAPI.__call__ ", "request_response.", "get_request_handler.", "RequestResponseCycle.", "HttpToolsProtocol.",
        "GuardedHttpProtocol.", "classify (", "solve_dependencies ", "run_endpoint_function ")),
    ("event loop: uvloop, sockets, HTTP parsing (native)", ("Runner.run (",)),  # only as the innermost frame
]
WAITS = ("_worker (concurrent/futures/thread.py:81)", "Condition.wait ", "watch (watchfiles", "Event.wait ",
         "Queue.get (queue.py")
OTHER = "other"


def category(frames: list[str]) -> str | None:
    """The category of one sampled stack (outermost frame first), None for a thread waiting for work."""
    if not frames:
        return None
    innermost = frames[-1]
    if innermost.startswith(WAITS):
        return None
    for name, markers in CATEGORIES:
        if markers[0].startswith("Runner.run"):
            if innermost.startswith(markers):
                return name
        elif any(f.startswith(markers) for f in frames):
            return name
    return OTHER


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) so far of each thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def profile(pid: int, seconds: float, load: Callable[[], dict]) -> tuple[dict[str, float], int, float]:
    """Run `load` (returns serve_load.load's dict) while py-spy samples `pid`: ({category: CPU seconds}, images
    answered, seconds)."""
    spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory(prefix="http-profile-") as tmp:
        raw = Path(tmp) / "samples.txt"
        proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate",
                                 "100", "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches
        cpu0, t0 = thread_cpu(pid), time.perf_counter()
        out = load()
        cpu1, elapsed = thread_cpu(pid), time.perf_counter() - t0
        proc.wait(seconds + 30)
        samples: dict[int, Counter] = defaultdict(Counter)
        for line in raw.read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            frames = stack.split(";")
            tid = int(frames[0].split("(", 1)[1].split(")", 1)[0])  # "thread (TID): name"
            samples[tid][category(frames[1:]) or ""] += int(count)
    spent: dict[str, float] = defaultdict(float)
    for tid, cpu in cpu1.items():
        used = cpu - cpu0.get(tid, 0.0)
        busy = {k: n for k, n in samples.get(tid, Counter()).items() if k}
        total = sum(busy.values())
        for k, n in (busy.items() if total else [(OTHER, 1)]):
            spent[k] += used * n / (total or 1)
    return dict(spent), len(out["latencies"]), elapsed


def profile_table(pid: int, seconds: float, loads: dict[int, Callable[[], dict]]) -> None:
    """Profile the server under each load ({images per request: load}) and print CPU ms per image by category."""
    results = {n: profile(pid, seconds, load) for n, load in loads.items()}
    names = [name for name, _ in CATEGORIES] + [OTHER]
    rows = []
    for name in names:
        row: list = [name]
        for spent, images, _ in results.values():
            total = sum(spent.values())
            row += [f"{1e3 * spent.get(name, 0.0) / max(images, 1):.3f}", f"{100 * spent.get(name, 0.0) / total:.1f}%"]
        rows.append(row)
    total_row: list = ["all (server process CPU)"]
    for spent, images, elapsed in results.values():
        total_row += [f"{1e3 * sum(spent.values()) / max(images, 1):.3f}", f"{images / elapsed:,.0f} img/s"]
    headers = ["where"] + [h for n in results for h in (f"{n} img/request: CPU ms/img", f"{n} img/request: share")]
    c.table(headers, [*rows, total_row],
            f"### Profile of the default server under load (py-spy samples x the kernel's per-thread CPU time, "
            f"{seconds:g} s per request size; py-spy's sampling slows the server a little)")


if __name__ == "__main__":
    main()
