"""The inference engine: one PromptedViT, the resident tasks in its prompt bank, and one engine thread.

Every forward runs in the single engine thread (never on the event loop). Tasks enter the bank from the
store (a cold load on first use, an upload, a rollback, or a change another replica made) only after
validating against this backbone; a swap replaces the task's bank row between gathers, so a batch in
flight finishes on the version it gathered and every result carries that version.

What the engine holds of each task (bank row, version, labels, size, LRU order, requests in flight, its lock)
is the task table's (server/task_table.py); the engine decides when to load, swap and drop, from the store.
A task name's walk: acquire (table: in flight; cold load: store -> validate -> table) -> the batcher -> the
forward (bank gather: prompts, version and labels together) -> release (table).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
import torch

from promptserve.backends import open_backend
from promptserve.fileformat import parse_header
from promptserve.preprocess import normalise
from promptserve.promptset import PromptSet
from server.backbone_setup import resolve_device, resolve_dtype
from server.batcher import ItemResult, WorkItem
from server.task_table import TaskTable

if TYPE_CHECKING:
    from promptserve.backbone import Backbone
    from server.limits import Limits
    from server.metrics import Metrics
    from server.settings import ServerSettings

log = logging.getLogger("promptserve.server")
COMPILING_BACKENDS = {"openvino"}  # backends that compile a variant per batch shape on its first use
WARM_BUDGET_S = 60.0


class Engine:
    def __init__(self, backbone: Backbone, store, settings: ServerSettings, metrics: Metrics,
                 limits: Limits | None = None, dtype: str | None = None, backend: str | None = None):
        """dtype, backend: the precision to run and what runs the forward (default the settings'; `auto` is
        decided by the caller first)."""
        self.backbone, self.store, self.metrics, self.limits = backbone, store, metrics, limits
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(dtype or settings.dtype, self.device)
        # hash the weights as trained before a bf16/fp16 cast rounds them: prompt sets name that fingerprint
        backbone.fingerprint  # noqa: B018 (cached property)
        self.backend = open_backend(backend or settings.backend, backbone, self.device, self.dtype, own_weights=True)
        self.model = self.backend.model
        self.data_config = backbone.data_config
        self.tasks = TaskTable(self.model.bank, settings.resident_max_tasks, settings.resident_max_bytes,
                               settings.pinned_tasks)
        self._sync_scheduled: set[str] = set()
        self._background: set[asyncio.Task] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptserve-engine")

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    # ---- validation --------------------------------------------------------------------------------
    def check(self, ps: PromptSet) -> None:
        """Raise the PromptSetError that says why `ps` cannot serve on this backbone (as add_task would)."""
        ps.validate(self.backbone)

    def load_checked(self, data: bytes) -> PromptSet:
        """The prompt set in `data`, within the server's limits and valid on this backbone (else the error)."""
        if self.limits is not None:  # from the header alone, before a long prompt set is loaded
            parse_header(data).check_limits(self.limits.max_prompt_tokens, self.limits.max_prompt_bytes)
        ps = PromptSet.load(data)
        self.check(ps)
        return ps

    # ---- requests --------------------------------------------------------------------------------------
    async def acquire(self, task: str) -> None:
        """Mark a request for `task` in flight, loading the task from the store if it is not resident.
        Raises the store's TaskNotFound for an unknown task (never a fallback)."""
        self.tasks.acquire(task)
        try:
            if not self.tasks.serving(task):
                await self._cold_load(task)
            self.tasks.touch(task)
        except BaseException:
            self.tasks.release(task)
            raise

    def release(self, task: str) -> None:
        self.tasks.release(task)

    async def run_batch(self, items: list[WorkItem]) -> tuple[list[ItemResult | BaseException], float, float]:
        """The forward for one batch, in the engine thread: (per-item result or error, start, seconds)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._forward_isolated, items)

    # ---- loading and swapping ------------------------------------------------------------------------
    async def _cold_load(self, task: str) -> None:
        async with self.tasks.locks.hold(task):
            if self.tasks.serving(task):
                return  # another request loaded it while this one waited for the lock
            start = perf_counter()
            record = await asyncio.to_thread(self.store.resolve, task)
            data = await asyncio.to_thread(self.store.get, task, record.version)
            ps = await asyncio.to_thread(self.load_checked, data)
            await self._install(task, record.version, ps)
            self.metrics.cold_loads.labels(task).inc()
            self.metrics.cold_load_seconds.observe(perf_counter() - start)
            log.info("cold load %s@%s (%.1f ms)", task, record.version[:12], 1e3 * (perf_counter() - start))

    async def sync(self, task: str, known: tuple[str, PromptSet] | None = None):
        """Make the bank serve the store's current version of `task` (after an upload, a rollback, or a
        change event); drop it when the store no longer has it. `known` = (version, validated set) saves a
        store read when the caller just stored that version. Returns the current TaskRecord or None.

        Always resolving the store's pointer (rather than trusting the caller's version) is what keeps
        replicas convergent when uploads race: whichever sync runs last installs the latest pointer."""
        from prompt_store import TaskNotFound

        async with self.tasks.locks.hold(task):
            try:
                record = await asyncio.to_thread(self.store.resolve, task)
            except TaskNotFound:
                self.tasks.drop(task)
                return None
            if self.tasks.serving(task) and self.tasks.version(task) == record.version:
                return record
            if known is not None and known[0] == record.version:
                ps = known[1]
            else:
                ps = await asyncio.to_thread(self.load_checked,
                                             await asyncio.to_thread(self.store.get, task, record.version))
            swapped = task in self.tasks
            await self._install(task, record.version, ps)
            if swapped:
                self.metrics.swaps.labels(task).inc()
            log.info("%s now serves %s", task, record.version[:12])
            return record

    async def drop(self, task: str) -> None:
        async with self.tasks.locks.hold(task):
            self.tasks.drop(task)

    async def _install(self, task: str, version: str, ps: PromptSet) -> None:
        """Swap the task's bank row (caller holds the task's lock and validated `ps`)."""
        for victim in await self.tasks.install(task, version, ps):
            self.metrics.evictions.inc()
            log.info("evicted %s (resident budget)", victim)

    # ---- store events (other replicas, the CLI) -----------------------------------------------------
    def on_store_change(self, loop: asyncio.AbstractEventLoop, event) -> None:
        """The store's callback (its own thread): hand the event to the loop."""
        loop.call_soon_threadsafe(self._schedule_sync, event.task)

    def _schedule_sync(self, task: str) -> None:
        if task in self._sync_scheduled:
            return  # one pending sync resolves the latest pointer anyway
        self._sync_scheduled.add(task)
        job = asyncio.create_task(self._sync_from_event(task))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _sync_from_event(self, task: str) -> None:
        self._sync_scheduled.discard(task)
        if task not in self.tasks:
            return  # not resident: the next request cold-loads the current version
        try:
            await self.sync(task)
        except Exception as e:  # e.g. a version stored through another path that fails validation here
            reason = getattr(e, "reason", type(e).__name__)
            self.metrics.refusals.labels(f"store_event_{reason}").inc()
            log.warning("store changed %s but its new version cannot serve here (%s); the previous version "
                        "keeps serving", task, e)

    async def preload(self, pinned: list[str]) -> None:
        """Fill the bank at start: pinned tasks first, then the store's others up to the budget."""
        names = [r.task for r in await asyncio.to_thread(self.store.list)]
        for task in pinned:
            if task not in names:
                log.warning("pinned task %s is not in the store", task)
        order = [t for t in pinned if t in names] + [t for t in names if t not in pinned]
        for task in order:
            if task not in pinned and len(self.tasks) >= self.tasks.max_tasks:
                break
            try:
                await self.sync(task)
            except Exception as e:
                log.warning("task %s is not served: %s", task, e)

    # ---- warming compiled shapes ---------------------------------------------------------------------------
    async def warm(self, max_batch: int, budget_s: float = WARM_BUDGET_S) -> int:
        """Before the server says ready, run the batch shapes it will serve once each, so that no request waits
        for a backend that compiles a variant per shape (openvino: seconds for a new graph) on first use: every
        batch size bucket up to `max_batch` with the resident tasks mixed, the largest first, so that the backend
        widens its graph to all of them at once (OpenVINOBackend._widened: a batch of any mix of these tasks
        then runs on it). Bounded by `budget_s` and by the variants the backend keeps. Returns the shapes run."""
        if self.backend.name not in COMPILING_BACKENDS or not self.model.bank.tasks:
            return 0
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._warm, max_batch, budget_s)

    def _warm(self, max_batch: int, budget_s: float) -> int:
        tasks = self.model.bank.tasks
        sizes = [max_batch] + [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
        batches = [[tasks[i % len(tasks)] for i in range(b)] for b in sizes]
        batches = batches[:getattr(self.backend, "max_variants", len(batches))]
        side, start, warmed = self.data_config.input_size, perf_counter(), 0
        for n, batch in enumerate(batches):
            if perf_counter() - start > budget_s:
                log.warning("warmed %d of %d batch shapes within %.0f s; the others compile on first use", n,
                            len(batches), budget_s)
                return warmed
            try:
                self.backend.classify(torch.zeros(len(batch), 3, side, side), self.model.bank.gather(batch))
                warmed += 1
            except Exception as e:  # a start-up must not fail on a warm-up: the batch's own forward will say why
                log.warning("warming a batch of %d over %d task(s) failed: %s", len(batch), len(set(batch)), e)
        log.info("warmed %d batch shapes on %s in %.1f s", warmed, self.backend.name, perf_counter() - start)
        return warmed

    # ---- the forward (engine thread) -----------------------------------------------------------------
    def _forward_isolated(self, items: list[WorkItem]):
        start = perf_counter()
        try:
            results: list[ItemResult | BaseException] = self._forward(items, start)
        except Exception as e:
            log.exception("batch of %d failed; retrying task by task", len(items))
            results = self._per_task(items, start, e)
        return results, start, perf_counter() - start

    def _per_task(self, items: list[WorkItem], start: float, error: Exception) -> list[ItemResult | BaseException]:
        """One task's failure must not fail the others' requests: rerun each task's images alone."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[item.task].append(i)
        results: list[ItemResult | BaseException] = [error] * len(items)
        if len(groups) == 1:
            return results
        for idxs in groups.values():
            try:
                for i, r in zip(idxs, self._forward([items[i] for i in idxs], start), strict=True):
                    results[i] = r
            except Exception as e:
                for i in idxs:
                    results[i] = e
        return results

    def _forward(self, items: list[WorkItem], start: float) -> list[ItemResult]:
        t0 = perf_counter()
        x = normalise(np.stack([item.pixels for item in items]), self.data_config)  # (B, 3, S, S)
        batch = self.model.bank.gather([item.task for item in items])  # prompts, versions and labels together
        logits, versions, labels = self.backend.classify(x, batch), batch.versions, batch.labels  # (B, C_max)
        probs = logits.float().softmax(dim=-1).cpu()  # padded classes get probability 0
        k_max = min(max(item.top_k for item in items), probs.shape[1])
        scores, indices = probs.topk(k_max, dim=1)
        compute = perf_counter() - t0
        out = []
        for j, item in enumerate(items):
            k = min(item.top_k, len(labels[j]), k_max)
            preds = [(labels[j][c], c, s) for c, s in zip(indices[j, :k].tolist(), scores[j, :k].tolist(), strict=True)]
            out.append(ItemResult(versions[j], preds, max(0.0, start - item.enqueued), compute))
        return out
