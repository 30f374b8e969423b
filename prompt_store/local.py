"""LocalStore: the registry in one directory, the embedded default.

    blobs/<sha256>.safetensors   the prompt sets, content-addressed and immutable
    blobs/<sha256>.json          their header fields (size, labels, method, metrics, fingerprint)
    tasks/<task>.json            line 1: {"current": record, "change": "put"|"rollback"}
                                 line 2: {"history": [{"version", "created"}, ...]}  (list() reads line 1 only)
    tmp/                         files being written; anything left here is a crashed writer's and is removed
    quarantine/                  unreadable task files `fsck --repair` moved aside (kept for a human to look at)
    .lock                        serialises writers, threads and processes alike

Crash safety: every file is written to tmp/, fsynced, then moved into place with os.replace and the
directory fsynced. A put writes its blob and sidecar before the task file, and the task file holds
both the pointer and the history, so one rename moves the pointer and appends the history together.
A crash therefore leaves the old task file or the new one, never a pointer to a missing blob; at
worst an unreferenced blob remains, which the next delete sweeps away. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles
from filelock import FileLock
from filelock import Timeout as LockTimeout
from pydantic_core import from_json  # about twice as fast as json.loads: list() parses thousands of records

from prompt_store.base import (
    DEFAULT_MAX_BYTES,
    BrokenRecord,
    ChangeEvent,
    FsckReport,
    PromptStore,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TaskNotFound,
    TaskRecord,
    check_task_name,
    inspect_upload,
    match_version,
    utc_now,
)
from promptserve.files import fsync_dir, write_atomic

log = logging.getLogger(__name__)
BLOB_SUFFIX = ".safetensors"


class LocalStore(PromptStore):
    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, lock_timeout: float = 60.0):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs, self.tasks, self.tmp = self.root / "blobs", self.root / "tasks", self.root / "tmp"
        for d in (self.blobs, self.tasks, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        # preserve_lock_file: deleting the lock file on release would let two writers lock two inodes.
        self._lock = FileLock(self.root / ".lock", timeout=lock_timeout, preserve_lock_file=True)
        self._watchers: list[_DirectoryWatcher] = []
        self._listed: dict[bytes, TaskRecord] = {}  # line 1 of a task file -> its record, from the last list()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # ---- reads (no lock: every file they open was renamed into place whole) ------------------------
    def resolve(self, task: str) -> TaskRecord:
        return _record(self._read_task(task))

    def get(self, task: str, version: str | None = None) -> bytes:
        state = self._read_task(task)
        wanted = state["current"]["version"] if version is None else \
            match_version(task, version, [h["version"] for h in state["history"]])
        try:
            return self._blob_path(wanted).read_bytes()
        except FileNotFoundError:  # only a concurrent delete of this task removes a blob it names
            raise TaskNotFound(f"task {task!r} was deleted while it was being read") from None

    def scan(self) -> tuple[list[TaskRecord], dict[str, str]]:
        with os.scandir(self.tasks) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".json") and not e.name.startswith("."))
        # A record is parsed again only when its bytes changed: a warm list() of 10,000 tasks is file reads.
        known, fresh, records, broken = self._listed, {}, [], {}
        tasks_fd = os.open(self.tasks, os.O_RDONLY)
        try:
            for name in names:
                head = _read_first_line(tasks_fd, name)
                if head is None:  # deleted since the scan
                    continue
                record = known.get(head)
                if record is None:
                    try:
                        record = _record(self._decode(head, self.tasks / name))
                    except BrokenRecord as e:
                        broken[name.removesuffix(".json")] = e.reason
                        continue
                fresh[head] = record
                records.append(record)
        finally:
            os.close(tasks_fd)
        self._listed = fresh
        return records, broken

    def history(self, task: str) -> list[TaskRecord]:
        state = self._read_task(task)
        return [self._version_record(task, h["version"], h["created"]) for h in state["history"]]

    # ---- writes (under the lock) --------------------------------------------------------------------
    def put(self, task: str, data: bytes) -> TaskRecord:
        upload = inspect_upload(task, data, self.max_bytes)  # before the lock: a refused put touches nothing
        with self._writing(), self._undo_on_failure() as written:
            state = self._read_state(self._task_path(task)) or {"history": []}
            blob, sidecar = self._blob_path(upload.version), self._sidecar_path(upload.version)
            for path, content in ((blob, upload.data), (sidecar, _dumps(upload.meta))):
                if not path.exists():
                    self._write_atomic(path, content)
                    written.append(path)
            created = next((h["created"] for h in state["history"] if h["version"] == upload.version), None)
            if created is None:  # new to this task: append it (a re-put of a known version only moves the pointer)
                created = utc_now()
                state["history"].append({"version": upload.version, "created": created})
            record = upload.record(task, created)
            state.update(current=record.to_dict(), change="put")
            self._write_atomic(self._task_path(task), _encode_state(state))
        return record

    def rollback(self, task: str, version: str) -> TaskRecord:
        with self._writing(), self._undo_on_failure():  # a full disk: StoreFull (507), the pointer unchanged
            state = self._read_task(task)
            version = match_version(task, version, [h["version"] for h in state["history"]])
            created = next(h["created"] for h in state["history"] if h["version"] == version)
            record = self._version_record(task, version, created)
            state.update(current=record.to_dict(), change="rollback")
            self._write_atomic(self._task_path(task), _encode_state(state))
        return record

    def delete(self, task: str) -> None:
        with self._writing():
            path = self._task_path(task)
            if not path.exists():
                raise TaskNotFound(f"no task {task!r}")
            path.unlink()  # the task is gone from here on; the sweep below only frees space
            fsync_dir(self.tasks)
            self._sweep_unreferenced_blobs()

    def collect_garbage(self) -> list[str]:
        with self._writing():
            return self._sweep_unreferenced_blobs()

    def _sweep_unreferenced_blobs(self) -> list[str]:
        """Remove blobs no task's history names: the deleted task's, and any a crashed put left behind.
        Skipped while a task record is unreadable: its history is unknown, so any blob may be its."""
        referenced = self._referenced_versions()
        if referenced is None:
            log.warning("%r: not sweeping unreferenced blobs while a task record is unreadable (run fsck)", self)
            return []
        orphans = self._orphans(referenced)
        for path in orphans:
            path.unlink(missing_ok=True)
        fsync_dir(self.blobs)
        return sorted({p.name.split(".", 1)[0] for p in orphans})

    def _referenced_versions(self) -> set[str] | None:
        referenced: set[str] = set()
        for path in self.tasks.glob("*.json"):
            try:
                state = self._read_state(path)
            except BrokenRecord:
                return None
            referenced.update(h["version"] for h in (state or {}).get("history", []))
        return referenced

    def _orphans(self, referenced: set[str]) -> list[Path]:
        return [p for p in self.blobs.iterdir() if p.name.split(".", 1)[0] not in referenced]

    def fsck(self, repair: bool = False) -> FsckReport:
        with self._writing(clean_tmp=False):
            report = FsckReport(temp_files=sorted(p.name for p in self.tmp.iterdir()), repaired=repair)
            for path in sorted(self.tasks.glob("*.json")):
                try:
                    state = self._read_state(path)
                    if state is not None:
                        _record(state)
                        missing = [h["version"] for h in state["history"] if not self._blob_path(h["version"]).exists()]
                        if missing:
                            raise BrokenRecord(f"version {missing[0][:12]} has no blob", "missing_blob")
                except (BrokenRecord, KeyError, TypeError) as e:
                    report.broken_tasks[path.stem] = getattr(e, "reason", "unexpected_layout")
            if repair and report.broken_tasks:
                quarantine = self.root / "quarantine"
                quarantine.mkdir(exist_ok=True)
                for task in report.broken_tasks:
                    os.replace(self.tasks / f"{task}.json", quarantine / f"{task}.json")
                fsync_dir(self.tasks)
            referenced = self._referenced_versions()
            if referenced is not None:
                report.orphan_blobs = sorted({p.name.split(".", 1)[0] for p in self._orphans(referenced)})
                if repair:
                    self._sweep_unreferenced_blobs()
            if repair:
                self._remove_leftover_temp_files()
        return report

    @contextlib.contextmanager
    def _undo_on_failure(self):
        """Remove the files a failed write already put in place (a full disk must not leave orphans), and
        report a full disk as StoreFull."""
        written: list[Path] = []
        try:
            yield written
        except BaseException as e:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull("the registry's disk is full: nothing was stored; free space and retry") from None
            raise

    @contextlib.contextmanager
    def _writing(self, clean_tmp: bool = True):
        try:
            self._lock.acquire()
        except LockTimeout:
            raise StoreUnavailable(f"registry {self.root} is locked by another writer for over "
                                   f"{self._lock.timeout:.0f} s ({self._lock.lock_file})") from None
        try:
            if clean_tmp:
                self._remove_leftover_temp_files()
            yield
        finally:
            self._lock.release()

    def _remove_leftover_temp_files(self) -> None:
        # We hold the writer lock, so nobody is writing into tmp/: whatever is there is a dead writer's.
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)

    def _write_atomic(self, target: Path, data: bytes) -> None:
        write_atomic(target, data, durable=True, tmp_dir=self.tmp)

    # ---- paths and small files ------------------------------------------------------------------------
    def _task_path(self, task: str) -> Path:
        return self.tasks / f"{check_task_name(task)}.json"

    def _blob_path(self, version: str) -> Path:
        return self.blobs / f"{version}{BLOB_SUFFIX}"

    def _sidecar_path(self, version: str) -> Path:
        return self.blobs / f"{version}.json"

    def _read_task(self, task: str) -> dict:
        state = self._read_state(self._task_path(task))
        if state is None:
            raise TaskNotFound(f"no task {task!r}")
        return state

    def _version_record(self, task: str, version: str, created: str) -> TaskRecord:
        meta = self._read_json(self._sidecar_path(version))
        if meta is None:
            raise StoreError(f"registry {self.root} is damaged: version {version} of task {task!r} has no "
                             f"{self._sidecar_path(version).name}")
        return TaskRecord(task=task, version=version, created=created, **meta)

    def _read_state(self, path: Path) -> dict | None:
        """A task file as {"current", "change", "history"}, or None if there is none."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        head, _, rest = data.partition(b"\n")
        return {**self._decode(head, path), **self._decode(rest, path)}

    def _read_json(self, path: Path) -> dict | None:
        try:
            return self._decode(path.read_bytes(), path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _decode(data: bytes, path: Path) -> dict:
        try:
            state = from_json(data)
        except ValueError as e:
            raise BrokenRecord(f"registry file {path.parent.name}/{path.name} is not valid JSON ({e}); it was not "
                               "written by LocalStore (`promptserve tasks fsck --repair` moves it aside)",
                               "unreadable") from None
        if not isinstance(state, dict):
            raise BrokenRecord(f"registry file {path.parent.name}/{path.name} is not a JSON object", "unreadable")
        return state

    # ---- change events ------------------------------------------------------------------------------
    def _new_watcher(self, callback: Callable[[ChangeEvent], None]) -> _DirectoryWatcher:
        return _DirectoryWatcher(self, callback)



class _DirectoryWatcher:
    """Turns renames in tasks/ (made by any process) into ChangeEvents, read from the task file itself,
    so a burst of changes to one task is reported once with its latest state."""

    READY_TIMEOUT_S = 5.0

    def __init__(self, store: LocalStore, callback: Callable[[ChangeEvent], None]):
        self.store, self.callback = store, callback
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prompt-store-watch:{store.root}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # Return only once the OS watch exists, so a change made right after subscribe() is not missed.
        if not self._ready.wait(self.READY_TIMEOUT_S):
            self.stop()
            raise StoreUnavailable(f"could not start watching {self.store.tasks} for changes")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        changes_seen = watchfiles.watch(
            self.store.tasks, watch_filter=_is_task_file, recursive=False, stop_event=self._stop,
            # step: report a lone change after 20 ms; debounce: a stream of changes at least every 200 ms.
            # rust_timeout + yield_on_timeout: the first (empty) yield tells us the watch is live.
            debounce=200, step=20, rust_timeout=100, yield_on_timeout=True, raise_interrupt=False)
        try:
            for changes in changes_seen:
                self._ready.set()
                for task in sorted({Path(path).stem for _, path in changes}):
                    self._report(task)
        except Exception:
            log.exception("watching %s stopped", self.store.tasks)
        finally:
            self._ready.set()

    def _report(self, task: str) -> None:
        try:
            state = self.store._read_state(self.store._task_path(task))
            if state is None:
                event = ChangeEvent(task=task, version=None, kind="delete")
            else:
                event = ChangeEvent(task=task, version=state["current"]["version"], kind=state["change"])
            self.callback(event)
        except Exception:  # a failing callback must not end the watch for every later change
            log.exception("change callback failed for task %r", task)


def _record(state: dict) -> TaskRecord:
    try:
        return TaskRecord.from_dict(state["current"])
    except (KeyError, TypeError) as e:
        raise BrokenRecord(f"a task record lacks its current version ({e})", "unexpected_layout") from None


def _is_task_file(change: watchfiles.Change, path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith(".json") and not name.startswith(".")


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()  # one line: JSON escapes newlines in strings


def _encode_state(state: dict) -> bytes:
    return (_dumps({"current": state["current"], "change": state["change"]}) + b"\n"
            + _dumps({"history": state["history"]}) + b"\n")


def _read_first_line(dir_fd: int, name: str, chunk: int = 1 << 16) -> bytes | None:
    """Line 1 of a task file (its current record) without reading the history after it."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        data = b""
        while b"\n" not in data:
            more = os.read(fd, chunk)
            if not more:
                break
            data += more
        return data.partition(b"\n")[0]
    finally:
        os.close(fd)
