"""Two server processes sharing one real redis-server: what one replica accepts, the other serves within
1 s (through the store's change events), and a rollback or delete on either reaches the other too."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.server_utils import AUTH, ServerProcess, image_bytes, prompt_set_bytes

pytestmark = pytest.mark.redis
PNG = {"content-type": "image/png"}
PROPAGATION_S = 1.0


@pytest.fixture(scope="module")
def replicas(redis_server, tmp_path_factory):
    """Two replicas on the session's redis-server (conftest.py; skips with a reason where it is missing),
    in a Redis database of their own so the store tests' keys and events never meet theirs."""
    tmp = tmp_path_factory.mktemp("replicas")
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    a = ServerProcess(tmp, url, name="a")
    b = ServerProcess(tmp, url, name="b")
    try:
        a.start()
        b.start()  # both import torch at once: start-up overlaps
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()


def version_on(replica, task: str) -> str | int:
    r = httpx.post(f"{replica.url}/classify/{task}", content=image_bytes(), headers=PNG, timeout=10)
    return r.json()["version"] if r.status_code == 200 else r.status_code


def seconds_until(replica, task: str, expected, limit_s: float = 5.0) -> float:
    """Seconds from now until `replica` answers `expected` (a version or a status), polled every 20 ms."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if version_on(replica, task) == expected:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{replica.url} did not serve {expected!r} for {task} within {limit_s} s")


def test_upload_to_one_replica_is_served_by_the_other(replicas):
    a, b = replicas
    v1 = httpx.put(f"{a.url}/tasks/shared", content=prompt_set_bytes(80), headers=AUTH).json()["version"]
    assert version_on(b, "shared") == v1  # B cold-loads it from Redis and now holds it resident
    assert httpx.get(f"{b.url}/tasks/shared").json()["resident_version"] == v1

    v2 = httpx.put(f"{a.url}/tasks/shared", content=prompt_set_bytes(81), headers=AUTH).json()["version"]
    assert seconds_until(b, "shared", v2) < PROPAGATION_S  # B swapped its resident row on A's change event

    rolled = httpx.post(f"{b.url}/tasks/shared/rollback", json={"version": v1}, headers=AUTH)
    assert rolled.status_code == 200
    assert seconds_until(a, "shared", v1) < PROPAGATION_S

    assert httpx.delete(f"{a.url}/tasks/shared", headers=AUTH).status_code == 200
    assert seconds_until(b, "shared", 404) < PROPAGATION_S


def test_refused_upload_on_one_replica_changes_nothing_on_either(replicas):
    a, b = replicas
    v1 = httpx.put(f"{b.url}/tasks/kept", content=prompt_set_bytes(90), headers=AUTH).json()["version"]
    first = httpx.put(f"{b.url}/tasks/later", content=prompt_set_bytes(91), headers=AUTH).json()["version"]
    assert version_on(b, "later") == first  # resident on B: a newer version reaches it only by a change event
    bad = httpx.put(f"{a.url}/tasks/kept", content=b"\x00" * 64, headers=AUTH)
    assert bad.status_code == 422
    # a write through A after the refused one: once B serves it, B has had every change event A sent before it
    later = httpx.put(f"{a.url}/tasks/later", content=prompt_set_bytes(92), headers=AUTH).json()["version"]
    seconds_until(b, "later", later)
    assert version_on(a, "kept") == version_on(b, "kept") == v1
    assert [h["version"] for h in httpx.get(f"{a.url}/tasks/kept").json()["history"]] == [v1]
