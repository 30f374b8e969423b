"""Ray Serve: routing by task (model multiplexing) vs Ray's default task-blind routing, same engine replicas.

    python benchmarks/ray_affinity.py                       # 2 replicas, 1,000 tasks, Zipf 1.0, 100 resident each
    python benchmarks/ray_affinity.py --budget-s 120 --concurrency 16

Both variants run at once on one local Ray instance, each as its own Serve application of 2 engine replicas
(server/ray_app.py's EngineReplica: the backbone once, at most --resident tasks, the mixed-task batcher), over one
redis-server holding the tasks. The driver sends single-image requests through server/ray_app.py's
RemotePredictor, the ingress's own code path: with the task as multiplexed model id (affinity) or without it
(round-robin: Ray's power-of-two-choices routing by queue length). Traffic: task ranks drawn from a Zipf
distribution over --tasks tasks, the same seeded stream for both variants; a closed loop of --concurrency
requests in flight. The variants alternate in rounds (shuffled order each round) after one warm-up round each
that fills the replicas' resident sets, so load from other jobs hits both alike; the run stops after the round
in which --budget-s ran out. Measured over the timed rounds, from the replicas' own counters:
cold loads (a task read from the store into the bank) per 1,000 requests, distinct tasks and images per batch,
and from the driver: requests/s and p50/p99 latency. Backbone: random-tiny (32 px, 2 layers), so a cold load
is large next to a forward, as it is for a ViT-B next to its store read plus validation.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import common as c
import numpy as np

VARIANTS = ("affinity", "round-robin")


def zipf_stream(n_tasks: int, count: int, exponent: float, seed: int) -> list[str]:
    weights = [1.0 / (rank + 1) ** exponent for rank in range(n_tasks)]
    order = list(range(n_tasks))
    random.Random(seed).shuffle(order)  # which task is popular has nothing to do with its name
    return [f"task-{order[r]:04d}" for r in random.Random(seed + 1).choices(range(n_tasks), weights, k=count)]


def seed_tasks(store_url: str, n_tasks: int) -> None:
    from prompt_store import open_store
    from promptserve.backbone import random_tiny_backbone
    from promptserve.testing import random_prompt_set

    bb = random_tiny_backbone()
    with open_store(store_url) as store:
        for i in range(n_tasks):
            ps = random_prompt_set(bb, visual=4, kv=4, classes=10, seed=i)
            store.put(f"task-{i:04d}", ps.to_bytes())


async def drive(predictor, tasks: list[str], pixels: np.ndarray, concurrency: int) -> tuple[list[float], float]:
    """Closed loop: `concurrency` requests in flight. Returns per-request seconds and the wall time."""
    queue = iter(tasks)
    latencies: list[float] = []

    async def worker() -> None:
        for task in queue:
            t0 = time.perf_counter()
            await predictor.predict(task, [pixels], 1)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


async def totals(handle, replicas: int) -> dict[str, float]:
    """Sum of every replica's counters (status() calls spread over the replicas by Ray until each answered)."""
    seen: dict[str, dict] = {}
    for _ in range(200):
        status = await handle.status.remote()
        seen[status["replica"]] = status
        if len(seen) == replicas:
            break
    keys = ("cold_loads", "batches", "batch_tasks_sum", "images")
    out = {k: sum(s[k] for s in seen.values()) for k in keys}
    out.update({f"images@{name}": s["images"] for name, s in seen.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--resident", type=int, default=100, help="resident tasks per replica")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of task popularity")
    p.add_argument("--round-requests", type=int, default=400)
    p.add_argument("--rounds", type=int, default=6, help="timed rounds per variant, at most")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-ongoing", type=int, default=64, help=(
        "requests one replica takes at once; beyond it Ray sends a task to a replica that does not hold it"))
    p.add_argument("--engine-cpus", type=float, default=0.5, help="Ray logical CPUs per engine replica")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall seconds for the timed rounds")
    args = p.parse_args()

    import ray
    from ray import serve

    from server.ray_app import RemotePredictor, engine_deployment
    from server.ray_settings import RaySettings
    from server.settings import ServerSettings
    from tests.store_utils import LocalRedisServer

    with c.recorded("ray_affinity"), tempfile.TemporaryDirectory() as tmp, \
            LocalRedisServer(Path(tmp) / "redis") as redis_server:
        t0 = time.perf_counter()
        seed_tasks(redis_server.url, args.tasks)
        print(f"seeded {args.tasks} tasks in {time.perf_counter() - t0:.1f} s", flush=True)
        ray.init(num_cpus=max(2, round(2 * args.replicas * args.engine_cpus + 0.5)), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        try:
            settings = ServerSettings(backbone="random-tiny", store=redis_server.url, admin_token="bench",
                                      resident_max_tasks=args.resident, torch_threads=1, max_batch=32, max_wait_ms=2,
                                      queue_limit=4096)
            rs = RaySettings(replicas=args.replicas, engine_num_cpus=args.engine_cpus,
                             max_ongoing_requests=args.max_ongoing)
            handles, predictors = {}, {}
            for variant in VARIANTS:
                name = f"bench-{variant}"
                handles[variant] = serve.run(engine_deployment(settings, rs), name=name, route_prefix=None)
                predictors[variant] = RemotePredictor(None, handles[variant], affinity=variant == "affinity")
            print(f"{len(VARIANTS)} x {args.replicas} replicas up after {time.perf_counter() - t0:.1f} s", flush=True)
            pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            result = asyncio.run(run_rounds(args, handles, predictors, pixels))
        finally:
            serve.shutdown()
            ray.shutdown()
        report(args, result)


async def run_rounds(args, handles: dict, predictors: dict, pixels: np.ndarray) -> dict:
    stream = zipf_stream(args.tasks, args.round_requests * (args.rounds + 1), args.zipf, seed=0)
    chunks = [stream[i * args.round_requests:(i + 1) * args.round_requests] for i in range(args.rounds + 1)]
    for variant in VARIANTS:  # warm-up: the same first chunk for both, untimed, fills the resident sets
        await drive(predictors[variant], chunks[0], pixels, args.concurrency)
    before = {v: await totals(handles[v], args.replicas) for v in VARIANTS}
    lat: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall = dict.fromkeys(VARIANTS, 0.0)
    rng, start, rounds = random.Random(0), time.perf_counter(), 0
    for chunk in chunks[1:]:
        order = list(VARIANTS)
        rng.shuffle(order)
        for variant in order:
            latencies, seconds = await drive(predictors[variant], chunk, pixels, args.concurrency)
            lat[variant] += latencies
            wall[variant] += seconds
        rounds += 1
        print(f"round {rounds}: {time.perf_counter() - start:.0f} s", flush=True)
        if time.perf_counter() - start > args.budget_s:
            break
    after = {v: await totals(handles[v], args.replicas) for v in VARIANTS}
    return {"rounds": rounds, "lat": lat, "wall": wall,
            "delta": {v: {k: after[v][k] - before[v].get(k, 0.0) for k in after[v]} for v in VARIANTS}}


def report(args, result: dict) -> None:
    rows, per_variant = [], {}
    for variant in VARIANTS:
        d, lat = result["delta"][variant], result["lat"][variant]
        n = len(lat)
        per_replica = [value for key, value in d.items() if key.startswith("images@")]
        per_variant[variant] = dict(cold=1000 * d["cold_loads"] / n, rps=n / result["wall"][variant],
                                    p99=1e3 * c.percentile(lat, 99))
        rows.append([variant, n, f"{1000 * d['cold_loads'] / n:.0f}", f"{d['batch_tasks_sum'] / d['batches']:.2f}",
                     f"{d['images'] / d['batches']:.2f}", f"{max(per_replica) / d['images']:.2f}",
                     f"{n / result['wall'][variant]:.1f}",
                     f"{1e3 * c.percentile(lat, 50):.1f}", f"{1e3 * c.percentile(lat, 99):.1f}"])
    a, b = per_variant["affinity"], per_variant["round-robin"]
    c.table(["routing", "requests", "cold loads / 1,000 req", "distinct tasks / batch", "images / batch",
             "busiest replica's share", "req/s", "p50 ms", "p99 ms"], rows,
            title=f"### {args.replicas} engine replicas x {args.engine_cpus} CPU, {args.tasks} tasks (Zipf "
                  f"{args.zipf}), {args.resident} resident per replica, concurrency {args.concurrency}, "
                  f"max {args.max_ongoing} ongoing per replica, "
                  f"{result['rounds']} timed rounds of {args.round_requests} requests per variant")
    c.table(["affinity vs round-robin", "ratio"], [
        ["cold loads", f"{a['cold'] / b['cold']:.2f}x" if b["cold"] else "-"],
        ["throughput", f"{a['rps'] / b['rps']:.2f}x"],
        ["p99 latency", f"{a['p99'] / b['p99']:.2f}x"]])


if __name__ == "__main__":
    main()
