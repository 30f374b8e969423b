"""The task table: every task this engine holds or is asked for, in one place.

What a task's entry holds, and where:
- its bank row, version and class names: in the prompt bank (promptserve/bank.py), because a forward must read
  them together with the prompts, under the bank's lock, while a swap may be writing; the table is the bank's
  only writer, so it always agrees with it;
- its size, LRU order and whether it is draining: `_entries`, in LRU order (least recently used first);
- requests in flight: `_inflight` (a request is counted before its task is loaded: a cold load runs inside it);
- the lock that serialises its loads, swaps and drops: `_locks`, held only while someone holds or waits for it.

Owned by the event loop (no lock of its own): every decision about what to load or evict is taken there; only
the bank copies run in a thread. A task with requests in flight is never evicted (a queued request must find its
task when its batch gathers): the budget is soft while every resident task is busy or pinned, and restored as
soon as one becomes idle. A deleted task with requests in flight drains: they finish on its row, new requests
reload it from the store (and so get the store's answer).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptserve.promptset import PromptSet, prompt_set_nbytes

if TYPE_CHECKING:
    from promptserve.bank import PromptBank


@dataclass
class _Entry:
    nbytes: int
    draining: bool = False  # deleted while requests for it were still queued: dropped when they are answered


class KeyedLocks:
    """An asyncio.Lock per key that exists only while someone holds or waits for it (a dict of locks keyed by
    request input would grow with every distinct name ever asked for)."""

    def __init__(self):
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] <= 0:
                del self._users[key], self._locks[key]


class TaskTable:
    def __init__(self, bank: PromptBank, max_tasks: int, max_bytes: int, pinned: list[str] | tuple[str, ...] = ()):
        if max_tasks < 1 or max_bytes < 1:
            raise ValueError("the resident budget needs room for at least one task")
        self.bank = bank
        self.max_tasks, self.max_bytes = max_tasks, max_bytes
        self.pinned = frozenset(pinned)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: Counter[str] = Counter()
        self.locks = KeyedLocks()

    # ---- reads -------------------------------------------------------------------------------------
    def __contains__(self, task: str) -> bool:
        """The task holds a bank row (maybe draining)."""
        return task in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tasks(self) -> list[str]:
        """Resident tasks, least recently used first."""
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def version(self, task: str) -> str | None:
        return self.bank.version(task) if task in self._entries else None

    def serving(self, task: str) -> bool:
        """Resident and not draining: a request for it needs no load."""
        entry = self._entries.get(task)
        return entry is not None and not entry.draining

    # ---- requests in flight ------------------------------------------------------------------------
    def acquire(self, task: str) -> None:
        self._inflight[task] += 1

    def release(self, task: str) -> None:
        """The request is answered; a draining task goes with its last one."""
        self._inflight[task] -= 1
        if self._inflight[task] <= 0:
            del self._inflight[task]
            entry = self._entries.get(task)
            if entry is not None and entry.draining:
                self._remove(task)

    def busy(self, task: str) -> bool:
        return self._inflight[task] > 0

    def touch(self, task: str) -> None:
        if task in self._entries:
            self._entries.move_to_end(task)

    # ---- changes (the caller holds the task's lock) -----------------------------------------------------
    async def install(self, task: str, version: str, ps: PromptSet) -> list[str]:
        """Write the task's row (a new task, or a swap that batches in flight never see half done), mark it
        the most recently used, evicting what no longer fits. `ps` is validated. Returns the evicted tasks."""
        await asyncio.to_thread(self.bank.put, task, ps, version)
        self._entries[task] = _Entry(prompt_set_nbytes(ps))
        self._entries.move_to_end(task)
        victims = self.victims(keep=task)
        for victim in victims:
            self._remove(victim)
        return victims

    def drop(self, task: str) -> None:
        """Forget the task: now, or once the requests already queued for it are answered."""
        entry = self._entries.get(task)
        if entry is None:
            return
        if self.busy(task):
            entry.draining = True
        else:
            self._remove(task)

    def _remove(self, task: str) -> None:
        self.bank.remove(task)
        del self._entries[task]

    # ---- budget ------------------------------------------------------------------------------------
    def victims(self, keep: str | None = None) -> list[str]:
        """Least recently used tasks to drop so the rest fits the budget; pinned, busy and `keep` stay."""
        count, nbytes = len(self._entries), self.nbytes
        out = []
        for task, entry in self._entries.items():
            if count <= self.max_tasks and nbytes <= self.max_bytes:
                break
            if task in self.pinned or task == keep or self.busy(task):
                continue
            out.append(task)
            count, nbytes = count - 1, nbytes - entry.nbytes
        return out
