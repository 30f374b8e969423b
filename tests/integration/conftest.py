"""Registry fixtures (the only place they live): a real redis-server for the session on a free loopback
port, and `registry`, a fresh empty store run once as a LocalStore and once as a RedisStore.

The Redis runs skip, saying how to install it, where redis-server is missing. No fakes."""

from __future__ import annotations

import uuid

import pytest

from prompt_store import open_store
from tests.store_utils import INSTALL_HINT, LocalRedisServer, find_redis_server


def _require_redis_server() -> None:
    if find_redis_server() is None:
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests keep apart by key prefix, not by flushing."""
    _require_redis_server()
    server = LocalRedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def restartable_redis_server(tmp_path):
    """A redis-server of this test's own, safe to kill and restart; it persists every write (fsync always)."""
    _require_redis_server()
    server = LocalRedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop(kill=True)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def registry_spec(request, tmp_path) -> tuple[str, dict]:
    """(spec, kwargs) for open_store: a fresh empty store that other processes can open too."""
    if request.param == "local":
        return str(tmp_path / "registry"), {}
    server = request.getfixturevalue("redis_server")
    return server.url, {"prefix": f"test-{uuid.uuid4().hex[:8]}:"}


@pytest.fixture
def registry(registry_spec):
    spec, kwargs = registry_spec
    store = open_store(spec, **kwargs)
    yield store
    store.close()
