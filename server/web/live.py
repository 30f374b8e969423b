"""Live view data: requests per second per task and batch composition over the last minutes.

Read from the server's own Prometheus metrics (nothing new is counted on the hot path): a sampler reads
the cumulative counters once per interval and keeps the differences in a ring buffer, so the page shows
the same numbers `/metrics` would give a Prometheus server scraping at that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from prometheus_client import Metric

from server.metrics import Metrics

SAMPLE_INTERVAL_S = 2.0
WINDOW_S = 600.0  # ten minutes of history: 300 points, a few KB of JSON


@dataclass
class Snapshot:
    """Cumulative counts at one instant."""

    requests: dict[str, float] = field(default_factory=dict)  # task -> classify requests (every status)
    batches: float = 0.0
    batch_tasks_sum: float = 0.0  # sum over batches of the distinct tasks in each
    batch_images_sum: float = 0.0


def _samples(metric_families: list[Metric], suffix: str):
    for family in metric_families:
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


def read_snapshot(metrics: Metrics) -> Snapshot:
    snap = Snapshot()
    for s in _samples(list(metrics.requests.collect()), "_total"):
        task = s.labels["task"]
        snap.requests[task] = snap.requests.get(task, 0.0) + s.value
    for s in _samples(list(metrics.batch_tasks.collect()), ""):
        if s.name.endswith("_count"):
            snap.batches = s.value
        elif s.name.endswith("_sum"):
            snap.batch_tasks_sum = s.value
    for s in _samples(list(metrics.batch_size.collect()), "_sum"):
        snap.batch_images_sum = s.value
    return snap


def latency_p50_ms(metrics: Metrics) -> dict[str, float]:
    """Per task, the median whole-request latency estimated from the histogram buckets (linear
    interpolation inside the bucket, as Prometheus' histogram_quantile does)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for s in _samples(list(metrics.request_seconds.collect()), "_bucket"):
        buckets.setdefault(s.labels["task"], []).append((float(s.labels["le"]), s.value))
    out = {}
    for task, rows in buckets.items():
        rows.sort()
        total = rows[-1][1]
        if total <= 0:
            continue
        half, lower_bound, lower_count = total / 2, 0.0, 0.0
        for bound, count in rows:
            if count >= half:
                if bound == float("inf"):  # the median lies past the last finite bucket: report that bound
                    out[task] = round(1e3 * lower_bound, 3)
                else:
                    share = (half - lower_count) / max(count - lower_count, 1e-12)
                    out[task] = round(1e3 * (lower_bound + share * (bound - lower_bound)), 3)
                break
            lower_bound, lower_count = bound, count
    return out


class LiveStats:
    """A ring buffer of per-interval rates, filled by `sample()` (the router's lifespan calls it)."""

    def __init__(self, metrics: Metrics, interval_s: float = SAMPLE_INTERVAL_S, window_s: float = WINDOW_S):
        self.metrics, self.interval_s, self.window_s = metrics, interval_s, window_s
        self.points: deque[dict] = deque(maxlen=max(1, int(window_s / interval_s)))
        self.last_used: dict[str, float] = {}  # task -> unix time its request count last grew
        self._previous: tuple[float, Snapshot] | None = None
        self._seen: dict[str, float] = {}  # request counts at the last read, for last_used

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        snap = self._read(now)
        if self._previous is not None:
            then, old = self._previous
            dt = max(now - then, 1e-6)
            rates = {task: round((count - old.requests.get(task, 0.0)) / dt, 3)
                     for task, count in snap.requests.items() if count > old.requests.get(task, 0.0)}
            batches = snap.batches - old.batches
            self.points.append({
                "t": round(now, 3),
                "requests_per_s": rates,
                "batches_per_s": round(batches / dt, 3),
                # mean over the batches of this interval; None when no batch ran (a gap, not a zero)
                "tasks_per_batch": round((snap.batch_tasks_sum - old.batch_tasks_sum) / batches, 3)
                if batches else None,
                "images_per_batch": round((snap.batch_images_sum - old.batch_images_sum) / batches, 3)
                if batches else None,
            })
        self._previous = (now, snap)

    def _read(self, now: float) -> Snapshot:
        """A fresh snapshot; a task whose request count grew since the last read was used by `now`."""
        snap = read_snapshot(self.metrics)
        for task, count in snap.requests.items():
            if count > self._seen.get(task, 0.0):
                self.last_used[task] = now
        self._seen = dict(snap.requests)
        return snap

    def totals(self) -> dict[str, dict]:
        """Per task since the server started: requests, median latency, last time it was used."""
        snap = self._read(time.time())
        p50 = latency_p50_ms(self.metrics)
        return {task: {"requests": int(count), "latency_p50_ms": p50.get(task), "last_used": self.last_used.get(task)}
                for task, count in snap.requests.items()}

    def to_json(self) -> dict:
        return {"interval_s": self.interval_s, "window_s": self.window_s, "now": round(time.time(), 3),
                "points": list(self.points), "tasks": self.totals()}

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)


@contextlib.asynccontextmanager
async def sampling(app):
    """Router lifespan: one sampler per app, stopped with it."""
    live = LiveStats(app.state.server.metrics)
    app.state.web_live = live
    runner = asyncio.create_task(live.run(), name="promptserve-web-live")
    try:
        yield
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


router = APIRouter(lifespan=sampling, tags=["web"])


@router.get("/ui/live.json", operation_id="live_stats",
            summary="Requests/s per task and distinct tasks per batch over the last minutes")
async def live_json(request: Request) -> dict:
    return request.app.state.web_live.to_json()
