"""RedisStore: the registry in Redis, shared by many server replicas, with change events.

Keys (all under `prefix`, so several deployments can share one Redis):
    current            hash  task -> version the task points at
    records            hash  task -> JSON of its current TaskRecord (+ "change": put|rollback)
    versions:<task>    hash  version -> created (when it was first put under this task)
    history:<task>     list  versions in put order, each once
    blob:<version>     the prompt set's bytes          meta:<version>  JSON of its header fields
    refs:<version>     set   tasks whose history holds the version (a delete frees it when empty)
    events             pub/sub channel: {"task", "version", "kind"} for every change

Every change is one Lua script, so Redis applies it whole or not at all (blob, pointer move, history
append and PUBLISH together) and a client that dies mid-put leaves nothing behind. The scripts are
idempotent, which is what makes retrying after a lost connection safe, and carry a deadline on Redis's clock,
so a write the client already reported as failed cannot land later (`_write`). Standalone Redis (not Cluster):
the keys of one change live in different hash slots. Run it with maxmemory-policy noeviction (the
default) and persistence on (appendonly yes): an evicted or lost blob is a registry that lies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic_core import from_json  # about twice as fast as json.loads: list() parses thousands of records
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    VersionNotFound,
    check_task_name,
    inspect_upload,
    match_version,
    utc_now,
)

log = logging.getLogger(__name__)
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError (restart) is a ConnectionError

# The record JSON is assembled by string concatenation: Redis's cjson would turn an empty labels list
# into {}. Task names and versions match [a-z0-9._-], and created is an ISO time, so none needs escaping.
_RECORD = """'{"task":"' .. task .. '","version":"' .. version .. '","created":"' .. created ..
    '","change":"' .. change .. '",' .. string.sub(redis.call('GET', meta_key), 2)"""

# Every write carries a deadline (microseconds of Redis's own clock, last ARGV): a script that reaches Redis after
# it (a paused or overloaded server answered the client's timeout first) changes nothing. The client answers a
# failure only once the deadline has passed, so a write is either applied and acknowledged, or neither.
_DEADLINE = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000000 + tonumber(now[2]) > tonumber(ARGV[#ARGV]) then return 'expired' end
"""

PUT_LUA = _DEADLINE + f"""
local task, version, change, meta_key = ARGV[5], ARGV[3], 'put', KEYS[2]
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], ARGV[2], 'NX')
local created = ARGV[4]
if redis.call('HSETNX', KEYS[3], version, created) == 1 then
    redis.call('RPUSH', KEYS[4], version)
else
    created = redis.call('HGET', KEYS[3], version)
end
redis.call('SADD', KEYS[7], task)
redis.call('HSET', KEYS[5], task, version)
redis.call('HSET', KEYS[6], task, {_RECORD})
redis.call('PUBLISH', ARGV[6], '{{"task":"' .. task .. '","version":"' .. version .. '","kind":"put"}}')
return created
"""

ROLLBACK_LUA = _DEADLINE + f"""
local task, version, change, meta_key = ARGV[1], ARGV[2], 'rollback', KEYS[4]
if redis.call('HEXISTS', KEYS[2], task) == 0 then return -1 end
local created = redis.call('HGET', KEYS[1], version)
if not created then return -2 end
redis.call('HSET', KEYS[2], task, version)
redis.call('HSET', KEYS[3], task, {_RECORD})
redis.call('PUBLISH', ARGV[3], '{{"task":"' .. task .. '","version":"' .. version .. '","kind":"rollback"}}')
return created
"""

# KEYS 5.. are (refs, blob, meta) per version of the history the client read; ARGV[2] is its length,
# checked so a put that slipped in between cannot leave a version behind.
DELETE_LUA = _DEADLINE + """
local task = ARGV[1]
if redis.call('HEXISTS', KEYS[1], task) == 0 then return 0 end
if redis.call('LLEN', KEYS[4]) ~= tonumber(ARGV[2]) then return -1 end
redis.call('HDEL', KEYS[1], task)
redis.call('HDEL', KEYS[2], task)
redis.call('DEL', KEYS[3], KEYS[4])
for i = 5, #KEYS, 3 do
    redis.call('SREM', KEYS[i], task)
    if redis.call('SCARD', KEYS[i]) == 0 then redis.call('DEL', KEYS[i], KEYS[i + 1], KEYS[i + 2]) end
end
redis.call('PUBLISH', ARGV[3], '{"task":"' .. task .. '","version":null,"kind":"delete"}')
return 1
"""


class RedisStore(PromptStore):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "promptserve:",
                 max_bytes: int = DEFAULT_MAX_BYTES, retries: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, socket_timeout_s: float = 2.0, connect_timeout_s: float = 2.0,
                 retry_s: float = 5.0):
        """socket_timeout_s bounds each command (a hung Redis), connect_timeout_s each connection attempt;
        a failing call is retried with back-off for at most retry_s in all, then StoreUnavailable."""
        if not prefix:
            raise ValueError("prefix must not be empty: it keeps deployments sharing one Redis apart")
        self.url, self.prefix, self.max_bytes = url, prefix, max_bytes
        self.retries, self.backoff_s, self.max_backoff_s, self.retry_s = retries, backoff_s, max_backoff_s, retry_s
        # redis-py's own retries are off: ours add back-off and end in one StoreUnavailable that names the server.
        self._redis = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=connect_timeout_s,
                                           socket_timeout=socket_timeout_s)
        self._put = self._redis.register_script(PUT_LUA)
        self._rollback = self._redis.register_script(ROLLBACK_LUA)
        self._delete = self._redis.register_script(DELETE_LUA)
        self.channel = self._key("events")
        self._watchers: list[_ChannelWatcher] = []
        self._listed: dict[bytes, TaskRecord] = {}  # raw record -> parsed, from the last list()

    def __repr__(self) -> str:
        return f"RedisStore({_safe_url(self.url)!r}, prefix={self.prefix!r})"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _call(self, what: str, fn: Callable):
        """Run fn, retrying lost connections with exponential back-off; then a StoreUnavailable."""
        start, delay = time.monotonic(), self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except CONNECTION_ERRORS as e:
                error = e
                if attempt < self.retries and time.monotonic() - start + delay < self.retry_s:
                    time.sleep(delay)
                    delay = min(2 * delay, self.max_backoff_s)
                else:
                    break
            except redis.ResponseError as e:
                if str(e).startswith("OOM"):  # maxmemory reached under noeviction: Redis's "disk full"
                    raise StoreFull(f"Redis is out of memory: nothing was stored ({what})") from None
                raise StoreError(f"Redis at {_safe_url(self.url)} refused {what}: {e}") from None
        raise StoreUnavailable(f"Redis at {_safe_url(self.url)} is unreachable: {what} failed "
                               f"{attempt + 1} times over {time.monotonic() - start:.1f} s ({error})") from None

    def _write(self, what: str, script, keys: list[str], args: list, applied: Callable[[], object]) -> object:
        """Run a write script with a deadline on Redis's clock (read first: a paused Redis fails here, before
        anything is sent). A write that could still land is never reported as failed before its deadline, and
        one reported failed was not applied: when an attempt's answer was lost, `applied()` reads back whether
        an earlier attempt landed (its result, or None)."""
        now_s, now_us = self._call(f"{what} (clock)", self._redis.time)
        sent = time.monotonic()
        deadline_us = now_s * 1_000_000 + now_us + int(self.retry_s * 1_000_000)
        try:
            result = self._call(what, lambda: script(keys=keys, args=[*args, deadline_us]))
        except StoreUnavailable:
            time.sleep(max(0.0, sent + self.retry_s + 0.05 - time.monotonic()))  # past the deadline: none can land
            result = b"expired"
        if result == b"expired":
            try:
                landed = self._call(f"{what} (check)", applied)
            except StoreUnavailable:
                landed = None
            if landed is None:
                raise StoreUnavailable(f"Redis at {_safe_url(self.url)} did not complete {what} within its "
                                       f"{self.retry_s:g} s deadline: nothing was changed; retry")
            return landed
        return result

    def _landed(self, task: str, version: str, versions_key: str) -> bytes | str | None:
        """`created` of `version` if the task points at it now (the write landed), else None."""
        if self._redis.hget(self._key("current"), task) != version.encode():
            return None
        return self._redis.hget(versions_key, version)

    # ---- reads --------------------------------------------------------------------------------------
    def resolve(self, task: str) -> TaskRecord:
        check_task_name(task)
        raw = self._call(f"resolve {task!r}", lambda: self._redis.hget(self._key("records"), task))
        if raw is None:
            raise TaskNotFound(f"no task {task!r}")
        return _record(task, raw)

    def get(self, task: str, version: str | None = None) -> bytes:
        check_task_name(task)
        if version is None:
            version = self._call(f"get {task!r}", lambda: self._redis.hget(self._key("current"), task))
            if version is None:
                raise TaskNotFound(f"no task {task!r}")
            version = version.decode()
        else:
            version = match_version(task, version, self._history_versions(task))
        data = self._call(f"get {task!r}", lambda: self._redis.get(self._key("blob", version)))
        if data is None:  # only a delete of this very task frees a blob its history names
            raise TaskNotFound(f"task {task!r} was deleted while it was being read")
        return data

    def scan(self) -> tuple[list[TaskRecord], dict[str, str]]:
        raw = self._call("list", lambda: self._redis.hgetall(self._key("records")))
        # A record is parsed again only when its bytes changed: a warm list() of 10,000 tasks is one HGETALL.
        known, fresh, broken = self._listed, {}, {}
        for task, value in raw.items():
            try:
                fresh[value] = known.get(value) or _record(task.decode(errors="replace"), value)
            except BrokenRecord as e:
                broken[task.decode(errors="replace")] = e.reason
        self._listed = fresh
        return sorted(fresh.values(), key=lambda r: r.task), broken

    def fsck(self, repair: bool = False) -> FsckReport:
        """Unreadable records and records whose blob is gone; with repair, their pointers are removed.
        (Orphan blobs cannot arise: every change is one Lua script.)"""
        _, broken = self.scan()
        pointers = self._call("fsck", self._pointers)
        for task, version in pointers.items():
            blob = self._key("blob", version)
            if task not in broken and not self._call("fsck", lambda b=blob: self._redis.exists(b)):
                broken[task] = "missing_blob"
        if repair and broken:
            self._call("fsck repair", lambda: self._redis.hdel(self._key("records"), *broken)
                       + self._redis.hdel(self._key("current"), *broken))
        return FsckReport(broken_tasks=broken, repaired=repair)

    def history(self, task: str) -> list[TaskRecord]:
        check_task_name(task)

        def read():
            pipe = self._redis.pipeline(transaction=True)
            pipe.lrange(self._key("history", task), 0, -1)
            pipe.hgetall(self._key("versions", task))
            versions, created = pipe.execute()
            metas = self._redis.mget([self._key("meta", v.decode()) for v in versions]) if versions else []
            return versions, created, metas

        versions, created, metas = self._call(f"history of {task!r}", read)
        if not versions:
            raise TaskNotFound(f"no task {task!r}")
        records = []
        for v, meta in zip(versions, metas, strict=True):
            if meta is None:  # deleted between the two reads
                raise TaskNotFound(f"task {task!r} was deleted while it was being read")
            records.append(TaskRecord(task=task, version=v.decode(), created=created[v].decode(), **json.loads(meta)))
        return records

    def _history_versions(self, task: str) -> list[str]:
        versions = self._call(f"history of {task!r}", lambda: self._redis.lrange(self._key("history", task), 0, -1))
        if not versions:
            raise TaskNotFound(f"no task {task!r}")
        return [v.decode() for v in versions]

    # ---- writes (each one Lua script) ------------------------------------------------------------------
    def put(self, task: str, data: bytes) -> TaskRecord:
        upload = inspect_upload(task, data, self.max_bytes)  # a refused put never reaches Redis
        v = upload.version
        keys = [self._key("blob", v), self._key("meta", v), self._key("versions", task), self._key("history", task),
                self._key("current"), self._key("records"), self._key("refs", v)]
        args = [upload.data, json.dumps(upload.meta, separators=(",", ":")), v, utc_now(), task, self.channel]
        created = self._write(f"put {task!r}", self._put, keys, args,
                              applied=lambda: self._landed(task, v, keys[2]))
        return upload.record(task, created.decode())

    def rollback(self, task: str, version: str) -> TaskRecord:
        check_task_name(task)
        version = match_version(task, version, self._history_versions(task))
        keys = [self._key("versions", task), self._key("current"), self._key("records"), self._key("meta", version)]
        args = [task, version, self.channel]
        created = self._write(f"rollback {task!r}", self._rollback, keys, args,
                              applied=lambda: self._landed(task, version, keys[0]))
        if created == -1:
            raise TaskNotFound(f"no task {task!r}")
        if created == -2:
            raise VersionNotFound(f"task {task!r} has no version {version!r}")
        meta = json.loads(self._call("rollback", lambda: self._redis.get(self._key("meta", version))))
        return TaskRecord(task=task, version=version, created=created.decode(), **meta)

    def delete(self, task: str) -> None:
        check_task_name(task)
        for _ in range(100):  # a put racing the delete changes the history; read it again
            versions = self._history_versions(task)
            keys = [self._key("current"), self._key("records"), self._key("versions", task), self._key("history", task)]
            for v in versions:
                keys += [self._key("refs", v), self._key("blob", v), self._key("meta", v)]
            args = [task, len(versions), self.channel]
            # 0 (already gone) after we read the history means another delete, or our own retried one, won.
            gone = lambda: 1 if not self._redis.hexists(self._key("current"), task) else None  # noqa: E731
            if self._write(f"delete {task!r}", self._delete, keys, args, applied=gone) != -1:
                return
        raise StoreError(f"delete {task!r} kept racing concurrent puts; try again")

    # ---- change events ------------------------------------------------------------------------------
    def _new_watcher(self, callback: Callable[[ChangeEvent], None]) -> _ChannelWatcher:
        return _ChannelWatcher(self, callback)

    def _pointers(self) -> dict[str, str]:
        """task -> current version, for catching up after a lost subscription."""
        return {t.decode(): v.decode() for t, v in self._redis.hgetall(self._key("current")).items()}

    def _last_changes(self, tasks: list[str]) -> dict[str, str]:
        """task -> "put" or "rollback", whichever last moved its pointer."""
        raws = self._redis.hmget(self._key("records"), tasks) if tasks else []
        return {t: from_json(raw).get("change", "put") if raw else "put" for t, raw in zip(tasks, raws, strict=True)}

    def close(self) -> None:
        super().close()
        self._redis.close()


class _ChannelWatcher:
    """Listens on the store's channel. Pub/sub drops what is published while we are disconnected, so
    after a reconnect it compares every pointer with what it last knew and reports the differences."""

    POLL_S = 0.2

    def __init__(self, store: RedisStore, callback: Callable[[ChangeEvent], None]):
        self.store, self.callback = store, callback
        self._stop = threading.Event()
        self._known: dict[str, str] = {}
        self._pubsub = None
        self._thread = threading.Thread(target=self._run, name=f"prompt-store-watch:{store.channel}", daemon=True)

    def start(self) -> None:
        # Subscribed (confirmed by the server) before returning, so no change after subscribe() is missed.
        self._pubsub, self._known = self.store._call("subscribe", self._connect)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()

    def _connect(self):
        """A confirmed subscription, then every pointer (read after subscribing: nothing falls between)."""
        pubsub = self.store._redis.pubsub()
        try:
            pubsub.subscribe(self.store.channel)
            confirmation = pubsub.get_message(timeout=2.0)
            if not confirmation or confirmation["type"] != "subscribe":
                raise redis.ConnectionError(f"no subscribe confirmation (got {confirmation!r})")
            return pubsub, self.store._pointers()
        except BaseException:
            pubsub.close()
            raise

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=self.POLL_S)
                except CONNECTION_ERRORS as e:
                    log.warning("lost the change channel of %r (%s); reconnecting", self.store, e)
                    self._reconnect()
                    continue
                if message and message["type"] == "message":
                    try:
                        event = json.loads(message["data"])
                        event = ChangeEvent(task=event["task"], version=event["version"], kind=event["kind"])
                    except (ValueError, KeyError, TypeError):  # someone else publishing on our channel
                        log.warning("ignored a message on %s that is not a change event", self.store.channel)
                        continue
                    self._emit(event)
        except Exception:
            log.exception("watching %s stopped", self.store.channel)

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()
        delay = self.store.backoff_s
        while not self._stop.is_set():
            try:
                self._pubsub, now = self._connect()
                break
            except CONNECTION_ERRORS:
                self._stop.wait(delay)
                delay = min(2 * delay, self.store.max_backoff_s)
        else:
            return
        moved = sorted(t for t in now if self._known.get(t) != now[t])
        try:
            kinds = self.store._last_changes(moved)
        except CONNECTION_ERRORS:  # the kind is a detail; the version is what matters
            kinds = {}
        for task in sorted(set(self._known) - set(now)):
            self._emit(ChangeEvent(task=task, version=None, kind="delete"))
        for task in moved:
            self._emit(ChangeEvent(task=task, version=now[task], kind=kinds.get(task, "put")))

    def _emit(self, event: ChangeEvent) -> None:
        if event.version is None:
            self._known.pop(event.task, None)
        else:
            self._known[event.task] = event.version
        try:
            self.callback(event)
        except Exception:  # a failing callback must not end the watch for every later change
            log.exception("change callback failed for %r", event)


def _record(task: str, raw: bytes) -> TaskRecord:
    try:
        return TaskRecord.from_dict(from_json(raw))
    except (ValueError, TypeError) as e:
        raise BrokenRecord(f"the record of task {task!r} in Redis cannot be read ({e})", "unreadable") from None


def _safe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
