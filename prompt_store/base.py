"""The registry interface both backends implement, its records, errors and the checks run before a put.

A task name is a movable pointer to a version (the sha256 of a prompt set's bytes). Old versions stay
until the task is deleted, so a rollback is only a pointer move. Nothing is written unless it passed
`inspect_upload` first: a refused put leaves a store exactly as it was.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptserve import naming
from promptserve.fileformat import PromptSetError, parse_header

DEFAULT_MAX_BYTES = 64 << 20
MIN_VERSION_PREFIX = 6  # shorter prefixes of a sha256 collide too easily to name a version by


@dataclass(frozen=True)
class TaskRecord:
    """One version of one task, as the registry reports it (JSON-friendly via to_dict)."""

    task: str
    version: str  # sha256 hex of the prompt set's bytes
    size: int
    created: str  # ISO time this version was first put under this task
    labels: list[str] = field(default_factory=list)
    method: str = ""
    metrics: dict = field(default_factory=dict)
    backbone_fingerprint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class ChangeEvent:
    task: str
    version: str | None  # None: the task was deleted
    kind: str  # "put" | "rollback" | "delete"


class StoreError(Exception):
    """Base of every registry error; str(e) is a one-line message meant for the user."""


class InvalidTaskName(StoreError, naming.InvalidTaskName):
    pass


class TooLarge(StoreError):
    pass


class InvalidPromptSet(StoreError):
    """The upload is not a valid prompt set; `reason` is the PromptSetError's stable code."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class TaskNotFound(StoreError):
    pass


class VersionNotFound(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


class StoreFull(StoreError):
    """The store's disk (or Redis's memory) is full: nothing was stored."""


class BrokenRecord(StoreError):
    """A task's record in the store cannot be read; only that task is affected (see `promptserve tasks fsck`)."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


@dataclass
class FsckReport:
    """What `fsck` found (and, with repair, fixed): names and short reasons, never file contents."""

    broken_tasks: dict[str, str] = field(default_factory=dict)  # task -> why its record cannot be read
    orphan_blobs: list[str] = field(default_factory=list)  # versions no history names (known once all are readable)
    temp_files: list[str] = field(default_factory=list)  # left by writers that died
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (self.broken_tasks or self.orphan_blobs or self.temp_files)

    def to_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def check_task_name(task: str) -> str:
    return naming.check_task_name(task, error=InvalidTaskName)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Upload:
    """A validated put: the bytes, their version, and the header fields a TaskRecord reports."""

    data: bytes
    version: str
    meta: dict  # size, labels, method, metrics, backbone_fingerprint

    def record(self, task: str, created: str) -> TaskRecord:
        return TaskRecord(task=task, version=self.version, created=created, **self.meta)


def inspect_upload(task: str, data: bytes, max_bytes: int) -> Upload:
    """Every check a put runs before it writes anything (name, size, safetensors header, metadata)."""
    check_task_name(task)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidPromptSet(f"expected the prompt set's bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise TooLarge(f"prompt set is {len(data):,} bytes, over the store's limit of {max_bytes:,} bytes")
    try:
        header = parse_header(data)  # the one header parser, shared with PromptSet.load
    except PromptSetError as e:
        raise InvalidPromptSet(f"not a valid prompt set: {e}", e.reason) from None
    meta = {"size": len(data), "labels": header.labels, "method": header.metadata.get("method", "e2vpt"),
            "metrics": header.metrics, "backbone_fingerprint": header.metadata.get("backbone_fingerprint", "")}
    return Upload(data=data, version=hashlib.sha256(data).hexdigest(), meta=meta)


def match_version(task: str, wanted: str, versions: list[str]) -> str:
    """The one version of `task` that is `wanted` or starts with it (a prefix of at least 6 hex digits)."""
    if wanted in versions:
        return wanted
    hits = [v for v in versions if len(wanted) >= MIN_VERSION_PREFIX and v.startswith(wanted)] if wanted else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise VersionNotFound(f"version prefix {wanted!r} of task {task!r} is ambiguous: give more digits")
    raise VersionNotFound(f"task {task!r} has no version {wanted!r} (see its history)")


class PromptStore(ABC):
    """A registry of prompt sets: task name -> current version, with history, rollback and change events."""

    max_bytes: int = DEFAULT_MAX_BYTES
    _watchers: list[Any]  # started watchers, set up by each store's __init__

    @abstractmethod
    def put(self, task: str, data: bytes) -> TaskRecord:
        """Validate, store the blob under its version, move the task's pointer to it."""

    @abstractmethod
    def get(self, task: str, version: str | None = None) -> bytes:
        """The bytes of the task's current version, or of one version from its history."""

    @abstractmethod
    def resolve(self, task: str) -> TaskRecord:
        """The task's current version and what its header says."""

    def list(self) -> list[TaskRecord]:
        """Every readable task's current record, sorted by task name (unreadable ones: `scan`)."""
        return self.scan()[0]

    @abstractmethod
    def scan(self) -> tuple[builtins.list[TaskRecord], dict[str, str]]:
        """(every readable task's current record sorted by name, {task: why its record cannot be read}).
        A broken record is that task's problem only: it never fails the listing of the others."""

    @abstractmethod
    def fsck(self, repair: bool = False) -> FsckReport:
        """Report unreadable task records, unreferenced blobs and leftover temp files; with `repair`, move
        unreadable records aside (the task disappears; its blobs stay until swept) and remove the rest."""

    @abstractmethod
    def history(self, task: str) -> builtins.list[TaskRecord]:
        """Every version ever put under the task, oldest first, each once (a re-put moves only the pointer)."""

    def collect_garbage(self) -> builtins.list[str]:
        """Remove what no task references (blobs a writer killed mid-upload left behind); the versions removed.
        Stores whose writes are atomic as a whole have nothing to collect."""
        return []

    @abstractmethod
    def rollback(self, task: str, version: str) -> TaskRecord:
        """Point the task at a version from its history (a full sha256 or a unique prefix)."""

    @abstractmethod
    def delete(self, task: str) -> None:
        """Remove the task's pointer and history, and every version no other task uses."""

    def subscribe(self, callback: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call `callback` from a background thread for changes made by this process and others;
        returns a function that stops the watcher. The watcher is live when this returns.
        An event says what a task points at now. RedisStore reports every change; LocalStore may report
        a burst of changes to one task (within ~20 ms) as one event carrying its latest state."""
        watcher = self._new_watcher(callback)
        watcher.start()
        self._watchers.append(watcher)

        def stop() -> None:
            watcher.stop()
            with contextlib.suppress(ValueError):
                self._watchers.remove(watcher)

        return stop

    @abstractmethod
    def _new_watcher(self, callback: Callable[[ChangeEvent], None]):
        """A not-yet-started watcher with start() and stop() that feeds `callback`."""

    def close(self) -> None:
        """Stop every watcher and release connections."""
        for watcher in list(self._watchers):
            watcher.stop()
        self._watchers.clear()

    def __enter__(self) -> PromptStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
