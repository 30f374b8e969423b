"""Cold loads and hot swaps of a ViT-B sized prompt set, from LocalStore and from RedisStore.

    python benchmarks/cold_load.py                    # ViT-B/16 backbone, both stores
    python benchmarks/cold_load.py --store local --cold 50 --uploads 5
    python benchmarks/cold_load.py --size demo        # the same path on the demo-sized backbone

1. Cold load, engine level: `Engine.acquire(task)` for a task that is in the store but not resident, i.e. what
   the first request for it waits for: store resolve + get, PromptSet.load, validation against the backbone
   (fingerprint, shapes, finite), bank insert. After each, the task is dropped again. Components are timed
   separately too (median).
2. Upload -> servable and -> first prediction, over HTTP against the app (uvicorn in a thread of this process,
   127.0.0.1): PUT /tasks/swap with a new version (validate, store durably, swap the bank row); it answers
   once the row is swapped, so `servable` is the PUT's round trip. Then POST /classify/swap, which must answer
   with the new version: `first prediction` = PUT start -> that answer (includes one ViT forward of 1 image).
The prompt set: 12 layers x (10 visual + 10 shared key/value prompts) + a 100-class head, float32 (~1 MB).
Targets: cold load p50 <= 5 ms (local), <= 10 ms (Redis); upload -> servable p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path

import common as c
import httpx
import torch

TOKEN = "bench-admin-token"
TARGETS_MS = {"local": 5.0, "redis": 10.0}


@contextlib.contextmanager
def open_store(kind: str, tmp: Path):
    from prompt_store import LocalStore
    from prompt_store.redis_store import RedisStore
    from tests.store_utils import LocalRedisServer

    if kind == "local":
        store = LocalStore(tmp / "registry")
        yield store
        store.close()
        return
    with LocalRedisServer(tmp / "redis") as server:
        store = RedisStore(server.url)
        yield store
        store.close()


def settings(**kw):
    from server.settings import ServerSettings

    # float32 on torch, named: dtype and backend auto are decided by a server's start-up, which an Engine built here
    # does not run (settings ignore a name they do not define, as `backend` was before the OpenVINO backend)
    return ServerSettings(device="cpu", dtype="float32", backend="torch", torch_threads=torch.get_num_threads(),
                          admin_token=TOKEN, resident_max_tasks=256, **kw)


# ---- 1. cold loads -----------------------------------------------------------------------------------------
def cold_loads(bb, store, names: list[str], n: int) -> tuple[list[float], dict[str, float]]:
    from server.engine import Engine
    from server.metrics import Metrics

    engine = Engine(bb, store, settings(), Metrics())

    async def run() -> list[float]:
        out = []
        for i in range(n + 1):  # the first one warms thread pools and connections
            task = names[i % len(names)]
            t0 = time.perf_counter()
            await engine.acquire(task)
            out.append(time.perf_counter() - t0)
            engine.release(task)
            await engine.drop(task)
        return out[1:]

    try:
        samples = asyncio.run(run())
        parts = {"store.resolve": [], "store.get": [], "PromptSet.load": [], "validate": [], "bank.put": []}
        from promptserve.promptset import PromptSet

        for i in range(min(n, 30)):
            task = names[i % len(names)]
            t0 = time.perf_counter()
            record = store.resolve(task)
            t1 = time.perf_counter()
            data = store.get(task, record.version)
            t2 = time.perf_counter()
            ps = PromptSet.load(data)
            t3 = time.perf_counter()
            engine.check(ps)
            t4 = time.perf_counter()
            engine.model.bank.put("probe", ps, record.version)
            t5 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                parts[key].append(dt)
        return samples, {k: statistics.median(v) for k, v in parts.items()}
    finally:
        engine.close()


# ---- 2. upload -> servable -> first prediction ----------------------------------------------------------
@contextlib.contextmanager
def app_server(bb, store):
    import uvicorn

    from server.app import create_app
    from tests.store_utils import free_port

    port = free_port()
    app = create_app(settings(host="127.0.0.1", port=port, max_wait_ms=0.0), backbone=bb, store=store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        c.wait_ready(url, alive=thread.is_alive)
        print(f"the app computes in {c.served_precision(url)}")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def uploads(bb, store, blobs: list[bytes], image: bytes) -> dict[str, list[float]]:
    out = {"servable": [], "first": [], "compute": []}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with app_server(bb, store) as url, httpx.Client(base_url=url, timeout=120.0) as client:
        for i, blob in enumerate(blobs):
            t0 = time.perf_counter()
            put = client.put("/tasks/swap", content=blob, headers=auth)
            t1 = time.perf_counter()
            put.raise_for_status()
            answer = client.post("/classify/swap", content=image, headers={"Content-Type": "image/jpeg"})
            t2 = time.perf_counter()
            answer.raise_for_status()
            if answer.json()["version"] != put.json()["version"]:
                raise RuntimeError(f"upload {i}: the first prediction after the upload used an old version")
            if i:  # the first upload creates the task (and warms the app): not a swap
                out["servable"].append(t1 - t0)
                out["first"].append(t2 - t0)
                out["compute"].append(answer.json()["timing_ms"]["compute"] / 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="b", choices=sorted(c.SIZES), help="backbone (default b: ViT-B/16)")
    parser.add_argument("--store", default="both", choices=("local", "redis", "both"))
    parser.add_argument("--cold", type=int, default=100, help="cold loads per store")
    parser.add_argument("--uploads", type=int, default=10, help="uploads (each followed by a prediction) per store")
    parser.add_argument("--visual", type=int, default=10)
    parser.add_argument("--kv", type=int, default=10)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with c.recorded("cold_load" + ("" if args.size == "b" else f"_{args.size}")):
        measure(args)


def measure(args) -> None:
    c.exit_on_sigterm()
    c.set_threads(args.threads)
    bb = c.backbone(args.size)
    bb.fingerprint  # noqa: B018 - hash the weights once, before anything is timed
    sets = c.prompt_sets(bb, 20, visual=args.visual, kv=args.kv, classes=args.classes)
    size_mb = len(sets[0].to_bytes()) / 1e6
    image = c.encoded_image(bb.data_config.input_size)
    kinds = ["local", "redis"] if args.store == "both" else [args.store]
    cold_rows, part_rows, upload_rows = [], [], []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="cold-load-") as tmp, open_store(kind, Path(tmp)) as store:
            names = [f"cold-{i}" for i in range(len(sets))]
            for name, s in zip(names, sets, strict=True):
                store.put(name, s.to_bytes())
            samples, parts = cold_loads(bb, store, names, args.cold)
            p50 = 1e3 * c.percentile(samples, 50)
            cold_rows.append([kind, len(samples), *c.ms_stats(samples), f"<= {TARGETS_MS[kind]:g}",
                              "yes" if p50 <= TARGETS_MS[kind] else "NO"])
            part_rows.append([kind, *(f"{1e3 * v:.2f}" for v in parts.values())])
            blobs = [c.random_prompt_set(bb, visual=args.visual, kv=args.kv, classes=args.classes,
                                         seed=1000 + i).to_bytes() for i in range(args.uploads + 1)]
            up = uploads(bb, store, blobs, image)
            serv50 = 1e3 * c.percentile(up["servable"], 50)
            upload_rows.append([kind, len(up["servable"]), *c.ms_stats(up["servable"]),
                                "yes" if serv50 <= 50 else "NO", *c.ms_stats(up["first"]),
                                f"{1e3 * statistics.median(up['compute']):,.1f}"])
    label = f"{c.SIZES[args.size][2]}, prompt set {size_mb:.2f} MB ({args.visual} visual + {args.kv} kv per layer, " \
            f"{args.classes} classes)"
    c.table(["store", "n", "p50 ms", "p95 ms", "p99 ms", "target p50", "met"], cold_rows,
            f"### Cold load (Engine.acquire of a non-resident task), {label}")
    c.table(["store", *(f"{k} ms" for k in parts)], part_rows, "### Cold load components (median)")
    c.table(["store", "n", "servable p50 ms", "p95", "p99", "<= 50 ms", "first prediction p50 ms", "p95", "p99",
             "forward ms (p50)"], upload_rows, f"### Upload -> servable -> first prediction over HTTP, {label}")


if __name__ == "__main__":
    main()
