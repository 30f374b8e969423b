"""Issue 12 in process (TestClient): pixel and prompt limits, one `file` part, the API token on every read
endpoint, no internals in error bodies, a broken task file, a full disk, the request deadline, a hung Redis."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from prompt_store import StoreUnavailable
from prompt_store.redis_store import RedisStore
from server.app import create_app
from server.images import FairDecoder
from server.limits import (
    MAX_DEFAULT_IMAGE_PIXELS,
    MIN_DEFAULT_IMAGE_PIXELS,
    default_image_pixels,
    resolve_limits,
    sequence_length,
)
from server.settings import ServerSettings
from tests.integration.server_utils import (
    ADMIN,
    AUTH,
    image_bytes,
    png_header_only,
    prompt_set_bytes,
    random_tiny,
    wait_until,
)

PNG = {"content-type": "image/png"}
API = "test-api-token"


def started(tmp_path, **overrides) -> TestClient:
    settings = ServerSettings(backbone="random-tiny", store=str(tmp_path / "registry"), admin_token=ADMIN,
                              max_wait_ms=1, **overrides)
    # raise_server_exceptions=False: see the 500 a client would get, not the exception behind it
    return TestClient(create_app(settings, backbone=random_tiny()), raise_server_exceptions=False)


def ready(client: TestClient) -> TestClient:
    wait_until(lambda: client.get("/readyz").status_code == 200, 60, what="ready")
    return client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with started(tmp_path_factory.mktemp("hardening")) as c:
        ready(c)
        assert c.put("/tasks/stable", content=prompt_set_bytes(1), headers=AUTH).status_code == 200
        yield c


# ---- images ---------------------------------------------------------------------------------------------------

def test_default_limits_follow_the_backbone():
    backbone = random_tiny()
    limits = resolve_limits(ServerSettings(backbone="random-tiny"), backbone)
    assert limits.max_image_pixels == default_image_pixels(32) == MIN_DEFAULT_IMAGE_PIXELS  # 32 px input: the floor
    assert default_image_pixels(96) == (32 * 96) ** 2 > MIN_DEFAULT_IMAGE_PIXELS
    assert default_image_pixels(224) == MAX_DEFAULT_IMAGE_PIXELS  # a phone photo, not more
    assert limits.max_request_pixels == 8 * limits.max_image_pixels
    assert limits.max_prompt_tokens == 2 * sequence_length(backbone) == 2 * (16 + 1)  # 32/8 = 4x4 patches + CLS


def test_the_per_request_pixel_budget_is_checked_from_the_headers(tmp_path):
    """32 images of 6000x6000 (the issue's flood) under the old 40-Mpixel image limit: 413 with the number,
    before a single pixel is decoded (the PNGs here have headers only and could not be decoded anyway)."""
    with started(tmp_path, max_image_pixels=40_000_000) as c:
        ready(c).put("/tasks/t", content=prompt_set_bytes(1), headers=AUTH)
        files = [("files", (f"{i}.png", png_header_only(6000, 6000), "image/png")) for i in range(32)]
        r = c.post("/classify/t", files=files)
        assert r.status_code == 413 and r.json()["error"] == "too_many_pixels", r.text
        assert str(32 * 6000 * 6000) in r.json()["detail"] and str(8 * 40_000_000) in r.json()["detail"]


def test_a_large_image_is_decoded_at_reduced_size_and_still_classified(client):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (2000, 1500), (200, 10, 10)).save(buf, "JPEG")
    r = client.post("/classify/stable", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text


def test_the_decode_pool_is_fair_across_requests():
    """With one thread, a request queued behind another's 8 images waits for one of them (round-robin), not 8."""
    async def scenario() -> list[str]:
        decoder, order = FairDecoder(threads=1, max_pixels=10**9), []

        def job(name: str) -> None:
            time.sleep(0.01)
            order.append(name)

        flood = [decoder.run("flood", 1, job, f"flood{i}") for i in range(8)]
        first = asyncio.ensure_future(asyncio.gather(*flood))
        await asyncio.sleep(0)  # the flood is queued first
        await decoder.run("small", 1, job, "small")
        await first
        decoder.shutdown()
        return order

    order = asyncio.run(scenario())
    assert order.index("small") == 2, order  # flood0 was running, flood1 was next in turn, then small


def test_the_decode_pool_keeps_within_its_pixel_budget():
    async def scenario() -> int:
        decoder, in_flight, peak = FairDecoder(threads=4, max_pixels=100), [0], [0]

        def job() -> None:
            in_flight[0] += 60
            peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.01)
            in_flight[0] -= 60

        await asyncio.gather(*[decoder.run(i, 60, job) for i in range(6)])
        decoder.shutdown()
        return peak[0]

    assert asyncio.run(scenario()) == 60  # two 60-pixel jobs never run together under a 100-pixel budget


def test_a_second_file_part_is_refused(client):
    files = [("file", ("a.png", image_bytes(1), "image/png")), ("file", ("b.png", image_bytes(2), "image/png"))]
    r = client.post("/classify/stable", files=files)
    assert r.status_code == 422 and r.json()["error"] == "several_file_parts" and "`files`" in r.json()["detail"]


# ---- prompt limits ----------------------------------------------------------------------------------------------

def test_prompts_longer_than_the_limit_are_refused_and_nothing_is_stored(client):
    before = client.get("/tasks/stable").json()
    limit = 2 * sequence_length(random_tiny())
    r = client.put("/tasks/stable", content=prompt_set_bytes(5, visual=limit + 1), headers=AUTH)
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert f"at most {limit}" in r.json()["detail"]
    assert client.get("/tasks/stable").json() == before
    assert client.put("/tasks/stable", content=prompt_set_bytes(5, visual=limit), headers=AUTH).status_code == 200


def test_the_prompt_bytes_limit(tmp_path):
    with started(tmp_path, max_prompt_mib=1e-4) as c:  # ~100 bytes: any prompt at all is over
        r = ready(c).put("/tasks/t", content=prompt_set_bytes(1), headers=AUTH)
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        assert c.put("/tasks/t", content=prompt_set_bytes(1, visual=0, kv=0), headers=AUTH).status_code == 200


# ---- tokens --------------------------------------------------------------------------------------------------

READ_ENDPOINTS = ["/tasks", "/tasks/t", "/metrics", "/docs", "/openapi.json"]


def test_the_api_token_guards_every_read_endpoint_but_the_probes(tmp_path):
    with started(tmp_path, api_token=API) as c:
        ready(c).put("/tasks/t", content=prompt_set_bytes(1), headers=AUTH)
        for path in READ_ENDPOINTS:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 403, path
            assert c.get(path, headers={"Authorization": f"Bearer {API}"}).status_code == 200, path
            assert c.get(path, headers=AUTH).status_code == 200, path  # the admin token opens reads too
        assert c.post("/classify/t", content=image_bytes(), headers=PNG).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        schema = c.get("/openapi.json", headers=AUTH).json()
        assert schema["paths"]["/tasks"]["get"]["security"] == [{"ApiToken": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]


def test_without_an_api_token_classify_declares_none(client):
    schema = client.get("/openapi.json").json()
    assert "security" not in schema["paths"]["/classify/{task}"]["post"]
    assert "ApiToken" not in schema.get("components", {}).get("securitySchemes", {})


# ---- error bodies, broken records, full disks, deadlines -------------------------------------------------------

def test_an_internal_error_answers_without_internals(tmp_path, monkeypatch):
    with started(tmp_path) as c:
        ready(c).put("/tasks/t", content=prompt_set_bytes(1), headers=AUTH)
        store = c.app.state.server.store

        def boom(*a, **kw):
            raise RuntimeError(f"secret detail at {tmp_path}")

        monkeypatch.setattr(store, "history", boom)
        r = c.get("/tasks/t")
        assert r.status_code == 500 and r.json()["error"] == "internal"
        assert "secret" not in r.text and "RuntimeError" not in r.text and str(tmp_path) not in r.text


def test_a_broken_task_file_is_that_tasks_problem_only(tmp_path):
    registry = tmp_path / "registry"
    with started(tmp_path) as c:  # one good task stored by a server, then the server is gone
        ready(c).put("/tasks/good", content=prompt_set_bytes(1), headers=AUTH)
    (registry / "tasks" / "bad.json").write_bytes(b"\x00 not json at all")
    with started(tmp_path) as c:
        ready(c)  # the server still becomes ready
        listing = c.get("/tasks").json()
        assert [t["task"] for t in listing["tasks"]] == ["good"]
        assert listing["broken"] == [{"task": "bad", "reason": "unreadable"}]
        for r in (c.post("/classify/bad", content=image_bytes(), headers=PNG), c.get("/tasks/bad")):
            assert r.status_code == 500 and r.json()["error"] == "broken_task", r.text
            assert "/" not in r.json()["detail"].replace("`promptserve tasks fsck`", "") and str(tmp_path) not in r.text
        assert c.post("/classify/good", content=image_bytes(), headers=PNG).status_code == 200
        assert str(tmp_path) not in c.get("/readyz").text


def test_a_full_disk_is_507_and_leaves_nothing_behind(client, monkeypatch):
    store = client.app.state.server.store
    before = client.get("/tasks/stable").json()
    blobs_before = sorted(os.listdir(store.blobs))
    real_fsync, calls = os.fsync, [0]

    def fsync_until_full(fd):
        calls[0] += 1
        if calls[0] >= 3:  # the blob is in place; its sidecar hits the full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    r = client.put("/tasks/stable", content=prompt_set_bytes(9), headers=AUTH)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert r.status_code == 507 and r.json()["error"] == "insufficient_storage" and "full" in r.json()["detail"]
    assert sorted(os.listdir(store.blobs)) == blobs_before and os.listdir(store.tmp) == []
    assert client.get("/tasks/stable").json() == before
    assert 'reason="insufficient_storage"' in client.get("/metrics").text


def test_a_request_past_its_deadline_gets_504(tmp_path, monkeypatch):
    with started(tmp_path, request_timeout_s=0.3) as c:
        ready(c).put("/tasks/t", content=prompt_set_bytes(1), headers=AUTH)

        async def stuck(*args, **kwargs):
            await asyncio.sleep(30)

        monkeypatch.setattr(c.app.state.server.predictor, "predict", stuck)
        start = time.monotonic()
        r = c.post("/classify/t", content=image_bytes(), headers=PNG)
        assert r.status_code == 504 and r.json()["error"] == "timeout" and time.monotonic() - start < 10
        assert 'status="504"' in c.get("/metrics").text


@pytest.mark.redis
def test_a_hung_redis_gives_unavailable_in_seconds(restartable_redis_server):
    store = RedisStore(restartable_redis_server.url, socket_timeout_s=0.5, connect_timeout_s=0.5, retry_s=1.0)
    store.put("t", prompt_set_bytes(1))
    pid = restartable_redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.resolve("t")
        assert time.monotonic() - start < 5
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()


def test_a_malformed_multipart_body_is_counted_as_its_4xx_not_500(client):
    r = client.post("/classify/stable", content=b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx",
                    headers={"content-type": "multipart/form-data"})  # no boundary parameter
    assert 400 <= r.status_code < 500 and r.json()["error"], r.text
    metrics = client.get("/metrics").text
    assert f'promptserve_classify_requests_total{{status="{r.status_code}",task="stable"}}' in metrics
    assert 'status="500"' not in metrics
