"""Which tasks hold a row in the prompt bank: LRU order, the budget (count and bytes), pins, and
in-flight counts.

Owned by the event loop (no lock): every decision about what to load or evict is taken there, and only
the slow parts (store reads, validation, bank copies) run in threads. A task with requests in flight
is never evicted: a queued request must find its task when its batch gathers. The budget is therefore
soft while every resident task is busy or pinned; it is restored as soon as one becomes idle.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    version: str
    nbytes: int


class ResidentSet:
    def __init__(self, max_tasks: int, max_bytes: int, pinned: list[str] | tuple[str, ...] = ()):
        if max_tasks < 1 or max_bytes < 1:
            raise ValueError("the resident budget needs room for at least one task")
        self.max_tasks, self.max_bytes = max_tasks, max_bytes
        self.pinned = frozenset(pinned)
        self._lru: OrderedDict[str, Resident] = OrderedDict()  # least recently used first
        self._inflight: Counter[str] = Counter()

    # ---- state -----------------------------------------------------------------------------------
    def __contains__(self, task: str) -> bool:
        return task in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def tasks(self) -> list[str]:
        return list(self._lru)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._lru.values())

    def get(self, task: str) -> Resident | None:
        return self._lru.get(task)

    def version(self, task: str) -> str | None:
        r = self._lru.get(task)
        return r.version if r else None

    # ---- changes ---------------------------------------------------------------------------------
    def add(self, task: str, version: str, nbytes: int) -> None:
        """Record a task as resident (or its new version) as the most recently used."""
        self._lru[task] = Resident(version, nbytes)
        self._lru.move_to_end(task)

    def touch(self, task: str) -> None:
        if task in self._lru:
            self._lru.move_to_end(task)

    def remove(self, task: str) -> None:
        self._lru.pop(task, None)

    # ---- requests in flight --------------------------------------------------------------------------
    def acquire(self, task: str) -> None:
        self._inflight[task] += 1

    def release(self, task: str) -> None:
        self._inflight[task] -= 1
        if self._inflight[task] <= 0:
            del self._inflight[task]

    def busy(self, task: str) -> bool:
        return self._inflight[task] > 0

    # ---- budget --------------------------------------------------------------------------------------
    def victims(self, keep: str | None = None) -> list[str]:
        """Least recently used tasks to drop so the rest fits the budget; pinned, busy and `keep` stay."""
        count, nbytes = len(self._lru), self.nbytes
        out = []
        for task, r in self._lru.items():
            if count <= self.max_tasks and nbytes <= self.max_bytes:
                break
            if task in self.pinned or task == keep or self.busy(task):
                continue
            out.append(task)
            count, nbytes = count - 1, nbytes - r.nbytes
        return out
