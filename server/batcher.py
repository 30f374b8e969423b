"""The dynamic batcher: one bounded queue for every task; a batch closes at `max_batch` images or
`max_wait_ms` after its first image was queued, whichever comes first; one forward per batch whatever
mix of tasks it holds; results handed back to each waiting request (decode -> batch -> predict -> unbatch).

While the engine runs one batch the next fills up in the queue, so under load batches grow by themselves
and at low load an image waits at most `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

import numpy as np

from server.errors import ApiError

if TYPE_CHECKING:
    from server.metrics import Metrics

log = logging.getLogger("promptserve.server")


@dataclass
class WorkItem:
    """One image on its way through the queue."""

    task: str
    pixels: np.ndarray  # (S, S, 3) uint8, already decoded and resized
    top_k: int
    future: asyncio.Future
    enqueued: float = field(default_factory=perf_counter)


@dataclass(frozen=True)
class ItemResult:
    version: str
    predictions: list[tuple[str, int, float]]  # (label, index, score), best first
    queue_s: float
    compute_s: float
    replica: str | None = None  # the engine replica that answered, when another process did (server/ray_app.py)


class BatchRunner(Protocol):
    """What runs a closed batch (server/engine.py's Engine): one result or error per item, in order."""

    async def run_batch(self, items: list[WorkItem]) -> tuple[list[ItemResult | BaseException], float, float]:
        """(per-item result or error, start, seconds)"""


class QueueFull(Exception):
    pass


class Batcher:
    def __init__(self, engine: BatchRunner, metrics: Metrics, max_batch: int, max_wait_ms: float, queue_limit: int):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue(maxsize=queue_limit)
        self._runner: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="promptserve-batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        while not self.queue.empty():  # nobody will run these any more: answer them
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down"))

    def submit(self, task: str, images: list[np.ndarray], top_k: int) -> list[asyncio.Future[ItemResult]]:
        """Queue every image of one request, or none of them (QueueFull) when they do not all fit."""
        if self.queue.qsize() + len(images) > self.queue.maxsize:
            self.metrics.queue_full.inc()
            raise QueueFull(f"{self.queue.qsize()} images are queued (limit {self.queue.maxsize})")
        loop = asyncio.get_running_loop()
        futures = []
        for pixels in images:
            future = loop.create_future()
            self.queue.put_nowait(WorkItem(task, pixels, top_k, future))  # the check above keeps this in bounds
            futures.append(future)
        return futures

    async def _collect(self) -> list[WorkItem]:
        first = await self.queue.get()
        batch = [first]
        deadline = first.enqueued + self.max_wait  # an image that already waited long goes out at once
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                results, _, compute = await self.engine.run_batch(batch)
            except Exception as e:  # the engine thread itself failed (shut down); answer, don't die
                log.exception("engine failed a batch of %d", len(batch))
                results, compute = [e] * len(batch), 0.0
            self._record(batch, results, compute)
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _record(self, batch: list[WorkItem], results: list, compute: float) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        m.batch_tasks.observe(len({item.task for item in batch}))
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, ItemResult):
                m.queue_seconds.labels(item.task).observe(result.queue_s)
                m.compute_seconds.labels(item.task).observe(result.compute_s)
                m.images.labels(item.task).inc()
