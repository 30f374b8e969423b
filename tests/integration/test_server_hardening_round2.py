"""Issue 23 in process (TestClient), one test per red-team finding fixed here: unknown task names leave no state
behind (5), 405 names the path's methods (6), the pages' security headers, no directory in a 409, auth before the
rollback body is read (7), a rollback on a full disk is 507 (2), and blobs a killed upload left are collected at
start (8). Decode parity (9, 10) is tests/e2e/test_decode_parity.py."""

from __future__ import annotations

import errno
import os
import tracemalloc

import pytest
from fastapi.testclient import TestClient

from prompt_store import LocalStore
from promptserve.backbone import BackboneSpec
from server.app import create_app
from server.demo import demo_prompt_set
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, REPO, image_bytes, prompt_set_bytes, random_tiny, wait_until

PNG = {"content-type": "image/png"}


def started(store_dir, **overrides) -> TestClient:
    settings = ServerSettings(backbone="random-tiny", store=str(store_dir), admin_token=ADMIN, max_wait_ms=1,
                              **overrides)
    return TestClient(create_app(settings, backbone=random_tiny()), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with started(tmp_path_factory.mktemp("registry")) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        assert c.put("/tasks/stable", content=prompt_set_bytes(1), headers=AUTH).status_code == 200
        yield c


def test_unknown_task_names_leave_nothing_behind(client):
    engine = client.app.state.server.engine

    def ask(names):
        for name in names:
            assert client.post(f"/classify/{name}", content=image_bytes(), headers=PNG).status_code == 404

    ask(f"warm-up-{i}" for i in range(300))
    tracemalloc.start(12)
    before = tracemalloc.take_snapshot()
    ask(f"never-uploaded-{i}" for i in range(1500))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # what the server's own code still holds (the test client's caches are not the server's)
    ours = [tracemalloc.Filter(True, f"{REPO}/{pkg}/*", all_frames=True) for pkg in ("server", "prompt_store",
                                                                                      "promptserve")]
    growth = sum(s.size_diff for s in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename"))
    assert len(engine.tasks.locks) == 0 and len(engine.tasks) == 1
    # a lock kept per name was ~280 bytes each (420 KB here); what stays is bounded: the cancelled deadline
    # timers of the last 30 s and the live view's window
    assert growth < 60_000, f"{growth} bytes kept for 1,500 unknown names"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/healthz", "GET"), ("DELETE", "/classify/x", "POST"), ("PATCH", "/tasks/x", "DELETE, GET, PUT"),
    ("PUT", "/v2", "GET"), ("GET", "/v2/models/x/infer", "POST"), ("POST", "/", "GET"),
    ("POST", "/ui/static/common.js", "GET"),
])
def test_405_names_the_methods_of_the_path(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    body = r.json()
    assert (body.get("detail") or body["error"]).endswith(f"use {allow}")


@pytest.mark.parametrize("page", ["/", "/ui/tasks", "/ui/tasks/stable", "/ui/live"])
def test_pages_forbid_framing_sniffing_and_foreign_code(client, page):
    r = client.get(page)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_a_fingerprint_refusal_names_no_directory(client):
    record = BackboneSpec("vit_tiny_patch16_224", "project-file", "/srv/private/models/vit-secret.safetensors")
    ps = demo_prompt_set(random_tiny(), ["a", "b"], visual_tokens=2, kv_tokens=2, seed=2)
    ps.backbone_fingerprint, ps.backbone = "0" * 64, record.to_json()  # as if trained on another machine's file
    blob = ps.to_bytes()
    r = client.put("/tasks/other", content=blob, headers=AUTH)
    assert r.status_code == 409, r.text
    assert "vit-secret.safetensors" in r.json()["detail"] and "/srv/private" not in r.json()["detail"]


def test_rollback_checks_the_token_before_reading_the_body(client):
    assert client.post("/tasks/stable/rollback", content=b"{not json").status_code == 401
    r = client.post("/tasks/stable/rollback", content=b"{not json", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "version" in r.json()["detail"]
    r = client.post("/tasks/stable/rollback", json={"ver": "x"}, headers=AUTH)
    assert r.status_code == 422 and "body.version" in r.json()["detail"]


def test_a_rollback_on_a_full_disk_is_507_and_changes_nothing(client, monkeypatch):
    first = client.get("/tasks/stable").json()["current"]["version"]
    assert client.put("/tasks/stable", content=prompt_set_bytes(5), headers=AUTH).status_code == 200
    before = client.get("/tasks/stable").json()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    r = client.post("/tasks/stable/rollback", json={"version": first}, headers=AUTH)
    monkeypatch.undo()
    assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
    assert client.get("/tasks/stable").json() == before


def test_blobs_a_killed_upload_left_are_collected_at_start(tmp_path):
    store = LocalStore(tmp_path / "registry")
    store.put("kept", prompt_set_bytes(1))
    orphan = store.blobs / ("f" * 64 + ".safetensors")  # a blob whose task pointer was never written
    orphan.write_bytes(prompt_set_bytes(2))
    with started(tmp_path / "registry") as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        assert not orphan.exists()
        assert c.post("/classify/kept", content=image_bytes(), headers=PNG).status_code == 200



def test_a_server_stopped_while_loading_prints_no_loading_lines_after(tmp_path, monkeypatch, caplog):
    """Issue 24 item 11: Ctrl-C while the backbone loaded left timm's 'Loading ...' lines after the shutdown, as if
    the server were still starting."""
    import asyncio
    import contextlib
    import logging
    import threading
    import time

    from promptserve import backbone as core
    from server.state import ServerState

    ready_made = random_tiny()  # built before build_backbone is replaced below (it is what builds it)
    loading = threading.Event()

    def slow_build(spec):  # the load goes on in its thread after the shutdown, as a real one does
        loading.set()
        time.sleep(1.0)
        logging.getLogger("timm.models._builder").info("Loading pretrained weights from file (after the shutdown)")
        return ready_made

    monkeypatch.setattr(core, "build_backbone", slow_build)
    monkeypatch.setattr(logging.getLogger("timm"), "level", logging.NOTSET)  # restored after the test
    state = ServerState(ServerSettings(backbone="random-tiny", store=str(tmp_path / "registry"), admin_token=ADMIN))
    caplog.set_level(logging.INFO)

    async def interrupted_start():
        starting = asyncio.create_task(state.start())
        assert await asyncio.to_thread(loading.wait, 30), "the backbone never started loading"
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await state.stop()

    asyncio.run(interrupted_start())  # returns once the load's thread has finished too
    assert "after the shutdown" not in caplog.text
