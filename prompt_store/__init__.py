"""The prompt-set registry: LocalStore (a directory, the embedded default) and RedisStore (shared by many
server replicas, with change events), behind one interface (prompt_store.base.PromptStore)."""

from __future__ import annotations

from prompt_store.base import (
    DEFAULT_MAX_BYTES,
    BrokenRecord,
    ChangeEvent,
    FsckReport,
    InvalidPromptSet,
    InvalidTaskName,
    PromptStore,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TaskNotFound,
    TaskRecord,
    TooLarge,
    VersionNotFound,
)
from prompt_store.local import LocalStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
REDIS_EXTRA_MISSING = "a redis:// store needs the Redis client, an optional extra: pip install 'promptserve[redis]'"


def open_store(spec: str, **kw) -> PromptStore:
    """"redis://host:port/db" (or rediss://, unix://) -> RedisStore; anything else is a directory -> LocalStore."""
    if str(spec).startswith(REDIS_SCHEMES):
        try:  # imported here: a local store needs no redis client
            from prompt_store.redis_store import RedisStore
        except ModuleNotFoundError as e:
            if e.name != "redis":
                raise
            raise StoreError(REDIS_EXTRA_MISSING) from None

        return RedisStore(str(spec), **kw)
    return LocalStore(spec, **kw)


__all__ = ["DEFAULT_MAX_BYTES", "REDIS_EXTRA_MISSING", "REDIS_SCHEMES",
           "BrokenRecord", "ChangeEvent", "FsckReport", "InvalidPromptSet", "InvalidTaskName",
           "LocalStore", "PromptStore", "StoreError", "StoreFull", "StoreUnavailable", "TaskNotFound", "TaskRecord",
           "TooLarge", "VersionNotFound", "open_store"]
