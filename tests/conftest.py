"""Session-wide test setup, for every tier (tests/README.md says what each folder holds).

Triton picks compiled or interpreted execution when a kernel module is imported, so TRITON_INTERPRET=1 must
be set before anything imports `triton`. This root conftest loads first; on machines without CUDA it turns
the interpreter on, so the kernel tests run on the CPU. A CUDA machine compiles the kernel, as in production.

No test writes outside temporary directories: the caches and settings that the trainer and other tools keep
under the home directory are pointed, before anything runs, at one folder of this session's, removed when it
ends. Servers and commands the tests start inherit it through the environment.

The registry fixtures live here too (the only place they do), for the integration and e2e tiers: a real
redis-server for the session on a free loopback port, and `registry`, a fresh empty store run once as a
LocalStore and once as a RedisStore. The Redis runs skip, saying how to install it, where redis-server is
missing. No fakes.
"""

import atexit
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

if "TRITON_INTERPRET" not in os.environ:
    import torch  # importing torch does not import triton

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# Servers started by tests run float32 torch unless a test asks otherwise: `dtype auto` and `backend auto` would
# time candidates at every start (seconds each) and, on a CPU with AMX, serve bf16, so exact float32 references
# would stop matching. tests/unit/test_precision.py tests the auto choice itself, and
# tests/integration/test_server_precision.py live servers with dtype and backend auto.
os.environ.setdefault("PROMPTSERVE_DTYPE", "float32")
os.environ.setdefault("PROMPTSERVE_BACKEND", "torch")

HOME_CACHES = Path(tempfile.mkdtemp(prefix="promptserve-tests-"))
atexit.register(shutil.rmtree, HOME_CACHES, ignore_errors=True)
(HOME_CACHES / "ray-auth-token").write_text(secrets.token_hex(32))
os.environ.update({
    "PROMPTSERVE_CACHE": str(HOME_CACHES / "promptserve"),  # decoded datasets, the distillation's teacher views
    "XDG_CACHE_HOME": str(HOME_CACHES / "cache"),  # pip's cache, Chromium's, dconf's
    "XDG_CONFIG_HOME": str(HOME_CACHES / "config"),  # Chromium's crash-report settings, even with a temp profile
    "MPLCONFIGDIR": str(HOME_CACHES / "matplotlib"),  # matplotlib's font list
    "TRITON_HOME": str(HOME_CACHES),  # Triton's compiled kernels ($TRITON_HOME/.triton)
    "RAY_AUTH_TOKEN_PATH": str(HOME_CACHES / "ray-auth-token"),  # else ray.init writes ~/.ray/auth_token
})

from prompt_store import open_store  # noqa: E402 (after the environment above is set)
from tests.store_utils import INSTALL_HINT, LocalRedisServer, find_redis_server  # noqa: E402


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
