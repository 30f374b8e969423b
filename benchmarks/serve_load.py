"""HTTP load against `promptserve serve` with 100 tasks: concurrency 1, 16, 64, without and with hot swaps.

    python benchmarks/serve_load.py                          # demo-sized backbone (random weights), 100 tasks
    python benchmarks/serve_load.py --seconds 30 --concurrency 1 16 64 128
    python benchmarks/serve_load.py --backbone runs/pretrain/vit_tiny_p4_32_cifar10_30ep.safetensors

The server is a separate process (`promptserve serve` on 127.0.0.1, a LocalStore in a temp dir holding 100 tasks of
10 visual + 10 kv prompts per layer, all resident, torch threads 1, float32 on torch, max batch 32, max wait 5 ms).
This process is the client (a minimal keep-alive HTTP/1.1 client on asyncio streams, so that the load generator
stays cheap next to the server on 2 cores): `c` workers each POST one JPEG at a time to /classify/{random task},
until `--requests` answers or `--seconds` passed per level. With uploads on, a new version of a random task is PUT
every 0.5 s while the load runs. Errors = any non-200 answer or transport error (uploads included). Batch sizes
come from the server's /metrics (promptserve_batch_size), as the difference over each level. The engine's own
batched throughput (PromptedViT, batch 32 over random tasks of the same 100, one thread, wall clock) is measured in
this process while the server is idle, before, between and after the levels.
Per-request timings the server reports (timing_ms): compute = the forward of the batch the image rode in,
queue = enqueue -> batch start (includes the batcher's max wait), server total = the route's whole time (decode
included); latency = what this client measured (HTTP both ways included).
Targets: zero errors with hot swaps; concurrency 1: latency p50 <= engine forward (the server's compute
time) + 15 ms; concurrency 64: throughput >= 0.8x the engine's batched throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common as c
import httpx
import torch

TOKEN = "bench-admin-token"
TASKS = 100
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def write_backbone(path: Path, size: str) -> None:
    """Random weights in the file format `promptserve pretrain` writes (metadata names the timm model)."""
    from safetensors.torch import save_file

    name, kwargs, _ = c.SIZES[size]
    bb = c.backbone(size)
    state = {k: v.contiguous() for k, v in bb.model.state_dict().items()}
    save_file(state, str(path), metadata={"timm_name": name, "timm_kwargs": json.dumps(kwargs)})


def start_server(backbone: Path, store: Path, port: int, log: Path, max_batch: int, max_wait_ms: float,
                 dtype: str = "float32", backend: str = "torch", torch_threads: int = 1, extra: tuple[str, ...] = ()):
    """`promptserve serve` on 127.0.0.1:port, 1 torch thread, in float32 on torch unless told (serve_load's engine
    rows, measured in this process, run float32 torch, so `req/s / engine` compares like with like)."""
    exe = Path(sys.executable).with_name("promptserve")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "promptserve_cli"]
    cmd += ["serve", "--backbone", str(backbone), "--store", str(store), "--host", "127.0.0.1", "--port", str(port),
            "--resident-max-tasks", str(2 * TASKS), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
            "--log-level", "warning", *extra]
    env = {**os.environ, "PROMPTSERVE_TORCH_THREADS": str(torch_threads), "PROMPTSERVE_ADMIN_TOKEN": TOKEN,
           "PROMPTSERVE_DTYPE": dtype, "PROMPTSERVE_BACKEND": backend}
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_histogram(url: str) -> Counter:
    """Cumulative promptserve_batch_size buckets {le: count} plus '_count' and '_sum'."""
    from prometheus_client.parser import text_string_to_metric_families

    out = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "promptserve_batch_size":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    out[s.labels["le"]] = s.value
                elif s.name.endswith(("_count", "_sum")):
                    out[s.name.rsplit("_", 1)[1]] = s.value
    return out


def histogram_text(before: Counter, after: Counter) -> tuple[str, float]:
    """'1:5 2:3 3-4:0 ...' (batches per size range) and the mean batch size, over one level."""
    parts, prev, lo = [], 0.0, 1
    for b in BUCKETS:
        cum = after[f"{float(b)}"] - before[f"{float(b)}"]
        if cum - prev:
            parts.append(f"{lo if lo == b else f'{lo}-{b}'}:{cum - prev:.0f}")
        prev, lo = cum, b + 1
    count = after["count"] - before["count"]
    return " ".join(parts), (after["sum"] - before["sum"]) / count if count else 0.0


class Connection:
    """A minimal keep-alive HTTP/1.1 client connection (asyncio streams). A load generator must cost far less
    CPU than the server it drives: on 2 cores an httpx client took as much CPU per request as the server did."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            self.writer.write(head.encode() + body)
            await self.writer.drain()
            header = (await self.reader.readuntil(b"\r\n\r\n")).lower()
            length = int(header.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            data = await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if b"connection: close" in header:
            self.close()
        return int(header[9:12]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError)


async def load(url: str, concurrency: int, requests: int, seconds: float, image: bytes, tasks: list[str],
               uploads: list[tuple[str, bytes]] | None, seed: int, content_type: str = "image/jpeg") -> dict:
    """`concurrency` workers POST `image` (a body of `content_type`: one image, or a multipart body of several,
    answered with a list) to /classify/{random task}; the timings are per image answered."""
    host, port = url.rsplit("/", 1)[1].split(":")
    rng = random.Random(seed)
    latencies, computes, queues, server_totals, statuses = [], [], [], [], Counter()
    up_lat, up_status = [], Counter()
    deadline = time.perf_counter() + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        conn = Connection(host, int(port))
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            task = rng.choice(tasks)
            t0 = time.perf_counter()
            try:
                status, body = await conn.request("POST", f"/classify/{task}", image, {"Content-Type": content_type})
            except TRANSPORT_ERRORS as e:
                statuses[type(e).__name__] += 1
                continue
            dt = time.perf_counter() - t0
            statuses[status] += 1
            if status == 200:
                answer = json.loads(body)
                for timing in (a["timing_ms"] for a in (answer if isinstance(answer, list) else [answer])):
                    latencies.append(dt)
                    computes.append(timing["compute"] / 1e3)
                    queues.append(timing["queue"] / 1e3)
                    server_totals.append(timing["total"] / 1e3)
        conn.close()

    async def uploader() -> None:
        conn = Connection(host, int(port))
        for task, blob in uploads:
            if sent >= requests or time.perf_counter() >= deadline:
                break
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request("PUT", f"/tasks/{task}", blob, {"Authorization": f"Bearer {TOKEN}"})
                up_status[status] += 1
            except TRANSPORT_ERRORS as e:
                up_status[type(e).__name__] += 1
            up_lat.append(time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, 0.5 - (time.perf_counter() - t0)))
        conn.close()

    start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*[worker() for _ in range(concurrency)], *([uploader()] if uploads else []))
    elapsed = time.perf_counter() - start
    return dict(latencies=latencies, computes=computes, queues=queues, server_totals=server_totals,
                overheads=[a - b for a, b in zip(latencies, computes, strict=True)], statuses=statuses, elapsed=elapsed,
                uploads=up_lat, upload_statuses=up_status, client_cpu=(time.process_time() - cpu0) / elapsed)


class EngineBench:
    """The engine's own batched throughput: PromptedViT, batch `max_batch` over random tasks of the same set, one
    thread, wall clock, in this process while the server is idle (measured next to every load level)."""

    def __init__(self, backbone: Path, sets: list, batch: int, repeats: int):
        import promptserve as ps

        self.model, self.names = c.prompted_model(ps.Backbone.from_file(backbone), sets)
        self.x, self.batch, self.repeats = c.images(self.model.backbone, batch), batch, repeats
        self.rng = random.Random(0)

    def images_per_s(self) -> float:
        tasks = [[self.rng.choice(self.names) for _ in range(self.batch)] for _ in range(self.repeats + 1)]
        it = iter(tasks)
        with torch.inference_mode():
            times = c.interleaved({"engine": lambda: self.model(self.x, next(it))}, self.repeats, warmup=1,
                                  clock="wall")
        return self.batch / statistics.median(times["engine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=sorted(c.SIZES), help="random backbone of this size")
    parser.add_argument("--backbone", type=Path, help="a weights file instead (from `promptserve pretrain`)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=3000, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=15.0, help="most seconds per level")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--engine-repeats", type=int, default=5)
    args = parser.parse_args()
    with c.recorded("serve_load"):
        measure(args)


def measure(args) -> None:
    c.exit_on_sigterm()
    torch.set_num_threads(1)
    print("this process is the client (its torch thread measures the engine); the server runs 1 torch thread\n")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp_name:
        tmp = Path(tmp_name)
        backbone = args.backbone
        if backbone is None:
            backbone = tmp / "backbone.safetensors"
            write_backbone(backbone, args.size)
        import promptserve as ps
        from prompt_store import LocalStore
        from tests.store_utils import free_port

        bb = ps.Backbone.from_file(backbone)
        sets = c.prompt_sets(bb, TASKS)
        names = [f"task-{i:03d}" for i in range(TASKS)]
        store = LocalStore(tmp / "registry")
        for name, s in zip(names, sets, strict=True):
            store.put(name, s.to_bytes())
        store.close()
        n_uploads = int(args.seconds / 0.5) + 2
        rng = random.Random(1)
        upload_sets = [(rng.choice(names), c.random_prompt_set(bb, visual=10, kv=10, classes=10, seed=10_000 + i)
                        .to_bytes()) for i in range(n_uploads * len(args.concurrency))]
        image = c.encoded_image(bb.data_config.input_size)
        engine = EngineBench(backbone, sets, args.max_batch, args.engine_repeats)
        engine_rates = [engine.images_per_s()]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp / "server.log"
        server = start_server(backbone, tmp / "registry", port, log, args.max_batch, args.max_wait_ms)
        rows = []
        try:
            c.wait_ready(url, alive=lambda: server.poll() is None)
            print(f"the server computes in {c.served_precision(url)}; the engine rows, in this process, in float32 on "
                  "torch\n")
            asyncio.run(load(url, 4, 40, 10.0, image, names, None, seed=0))  # warm-up: connections, first batches
            for swaps in (False, True):
                for conc in args.concurrency:
                    ups = upload_sets[:n_uploads] if swaps else None
                    upload_sets = upload_sets[n_uploads:] if swaps else upload_sets
                    before, server_cpu = batch_histogram(url), cpu_seconds(server.pid)
                    r = asyncio.run(load(url, conc, args.requests, args.seconds, image, names, ups, seed=conc))
                    server_cpu = (cpu_seconds(server.pid) - server_cpu) / r["elapsed"]
                    hist, mean_batch = histogram_text(before, batch_histogram(url))
                    engine_rates.append(engine.images_per_s())
                    ok = len(r["latencies"])
                    vs_engine = ok / r["elapsed"] / ((engine_rates[-2] + engine_rates[-1]) / 2)
                    errors = sum(n for s, n in r["statuses"].items() if s != 200)
                    up_errors = sum(n for s, n in r["upload_statuses"].items() if s != 200)
                    rows.append([conc, "yes" if swaps else "no", ok, f"{ok / r['elapsed']:,.1f}", f"{vs_engine:.2f}",
                                 *c.ms_stats(r["latencies"]),
                                 *(f"{1e3 * statistics.median(r[k]):,.1f}" for k in ("computes", "queues",
                                                                                      "server_totals", "overheads")),
                                 errors,
                                 f"{len(r['uploads'])}/{up_errors}" if swaps else "-", f"{mean_batch:.1f}", hist,
                                 f"{100 * server_cpu:.0f}%", f"{100 * r['client_cpu']:.0f}%"])
                    print(f"  c={conc} swaps={swaps}: {ok} ok, statuses {dict(r['statuses'])}, uploads "
                          f"{dict(r['upload_statuses'])}", flush=True)
        finally:
            stop_server(server)
            if server.returncode not in (0, -15) or any(r[12] for r in rows):
                print("server log (tail):\n" + log.read_text()[-3000:])
    label = str(args.backbone) if args.backbone else c.SIZES[args.size][2] + " (random weights)"
    c.table(["concurrency", "uploads every 0.5 s", "ok", "req/s", "req/s / engine", "p50 ms", "p95 ms", "p99 ms",
             "compute p50", "queue p50", "server total p50", "latency - compute p50", "errors", "uploads/errors",
             "mean batch", "batch sizes (batches)", "server CPU", "client CPU"], rows,
            f"### HTTP load, {label}, {TASKS} tasks, max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, "
            f"{args.seconds:g} s or {args.requests} requests per row")
    rates = ", ".join(f"{r:,.0f}" for r in engine_rates)
    print(f"engine's own batched throughput (batch {args.max_batch}, wall, 1 thread), measured before, between and "
          f"after the levels: {rates} images/s; `req/s / engine` divides by the mean of the two measurements "
          f"around its level (target >= 0.8 at concurrency 64)")


if __name__ == "__main__":
    main()
