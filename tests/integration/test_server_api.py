"""The HTTP API at app level (FastAPI's TestClient, the real app and lifespan, a LocalStore in a temp dir):
classify forms, upload -> new version, rollback, delete, exact predictions, metrics, residency."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from promptserve.backbone import random_tiny_backbone
from promptserve.model import PromptedViT
from promptserve.preprocess import image_to_uint8, normalise
from promptserve.promptset import PromptSet
from server.app import create_app
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, image_bytes, prompt_set_bytes, random_tiny, wait_until

PNG = {"content-type": "image/png"}


def start(settings: ServerSettings, **kw) -> TestClient:
    client = TestClient(create_app(settings, **kw))
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, 60, what="readyz 200")
    return client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = tmp_path_factory.mktemp("registry")
    settings = ServerSettings(backbone="random-tiny", store=str(store), admin_token=ADMIN, max_wait_ms=1,
                              queue_limit=4, max_images_per_request=8)
    c = start(settings, backbone=random_tiny())
    yield c
    c.__exit__(None, None, None)


def upload(client, task: str, data: bytes, headers=AUTH):
    return client.put(f"/tasks/{task}", content=data, headers=headers)


def metric_samples(client) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthz_readyz_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["fingerprint"] == random_tiny().fingerprint
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/classify/{task}", "/tasks", "/tasks/{task}", "/tasks/{task}/rollback", "/healthz", "/readyz",
                 "/metrics"):
        assert path in paths
    assert "multipart/form-data" in paths["/classify/{task}"]["post"]["requestBody"]["content"]


def test_classify_single_image_raw_and_multipart(client):
    v1 = upload(client, "single", prompt_set_bytes(1, classes=3)).json()["version"]
    raw = client.post("/classify/single?top_k=2", content=image_bytes(0), headers=PNG)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["task"] == "single" and body["version"] == v1
    assert [p["label"] for p in body["predictions"]] == [f"s1-c{p['index']}" for p in body["predictions"]]
    assert len(body["predictions"]) == 2 and body["predictions"][0]["score"] >= body["predictions"][1]["score"]
    assert set(body["timing_ms"]) == {"queue", "compute", "total"}
    form = client.post("/classify/single", files={"file": ("x.png", image_bytes(0), "image/png")}).json()
    assert len(form["predictions"]) == 3  # top_k 5 clipped to the task's 3 classes
    assert form["predictions"][:2] == body["predictions"]


def test_classify_several_images_answers_in_order(client):
    upload(client, "multi", prompt_set_bytes(2, classes=4))
    images = [image_bytes(seed, size=(20 + 7 * seed, 31)) for seed in range(3)]
    answers = client.post("/classify/multi", files=[("files", (f"{i}.png", b)) for i, b in enumerate(images)]).json()
    assert isinstance(answers, list) and len(answers) == 3
    for data, answer in zip(images, answers, strict=True):
        alone = client.post("/classify/multi", content=data, headers=PNG).json()
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in alone["predictions"]]
        assert answer["predictions"][0]["score"] == pytest.approx(alone["predictions"][0]["score"], abs=1e-5)


def test_served_scores_equal_prompted_vit(client):
    data = prompt_set_bytes(3, classes=5, visual=3, kv=1)
    upload(client, "exact", data)
    reference = PromptedViT(random_tiny_backbone())
    reference.add_task("exact", PromptSet.load(data))
    cfg = reference.backbone.data_config
    for seed in range(3):
        img = image_bytes(seed, size=(48, 40))
        x = normalise(image_to_uint8(img, cfg.input_size, cfg.interpolation)[None], cfg)
        probs = reference(x, ["exact"]).softmax(-1)[0]
        served = client.post("/classify/exact?top_k=5", content=img, headers=PNG).json()["predictions"]
        assert [p["index"] for p in served] == probs.argsort(descending=True).tolist()
        for p in served:
            assert p["score"] == pytest.approx(probs[p["index"]].item(), abs=1e-5)


def test_upload_rollback_delete(client):
    v1 = upload(client, "life", prompt_set_bytes(10)).json()["version"]
    assert client.post("/classify/life", content=image_bytes(), headers=PNG).json()["version"] == v1
    v2 = upload(client, "life", prompt_set_bytes(11)).json()["version"]
    assert v2 != v1
    answer = client.post("/classify/life", content=image_bytes(), headers=PNG).json()
    assert answer["version"] == v2 and answer["predictions"][0]["label"].startswith("s11-")
    detail = client.get("/tasks/life").json()
    assert detail["current"]["version"] == v2 and [h["version"] for h in detail["history"]] == [v1, v2]
    assert detail["resident"] and detail["resident_version"] == v2
    assert any(t["task"] == "life" and t["resident"] for t in client.get("/tasks").json()["tasks"])

    rolled = client.post("/tasks/life/rollback", json={"version": v1}, headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["version"] == v1
    assert client.post("/classify/life", content=image_bytes(), headers=PNG).json()["version"] == v1

    assert client.delete("/tasks/life", headers=AUTH).json() == {"task": "life", "deleted": True}
    gone = client.post("/classify/life", content=image_bytes(), headers=PNG)
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_task"
    assert client.get("/tasks/life").status_code == 404


def test_metrics_parse_and_move(client):
    upload(client, "counted", prompt_set_bytes(20))
    before = metric_samples(client)
    for _ in range(3):
        client.post("/classify/counted", content=image_bytes(), headers=PNG)
    upload(client, "counted", b"not a prompt set")
    after = metric_samples(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("promptserve_classify_requests_total", task="counted", status="200") == 3
    assert delta("promptserve_classify_images_total", task="counted") == 3
    assert delta("promptserve_queue_seconds_count", task="counted") == 3
    assert delta("promptserve_compute_seconds_count", task="counted") == 3
    assert delta("promptserve_batch_size_count") >= 1 and delta("promptserve_batch_tasks_count") >= 1
    assert delta("promptserve_upload_refusals_total", reason="format") == 1
    assert after[("promptserve_resident_tasks", ())] >= 1 and after[("promptserve_resident_bytes", ())] > 0
    assert ("promptserve_queue_depth", ()) in after
    assert after[("promptserve_uploads_total", (("task", "counted"),))] >= 1


def test_resident_budget_lru_pins_and_cold_loads(tmp_path):
    store = str(tmp_path / "registry")
    setup = start(ServerSettings(backbone="random-tiny", store=store, admin_token=ADMIN), backbone=random_tiny())
    versions = {f"t{i}": upload(setup, f"t{i}", prompt_set_bytes(30 + i)).json()["version"] for i in range(4)}
    setup.__exit__(None, None, None)

    c = start(ServerSettings(backbone="random-tiny", store=store, admin_token=ADMIN, resident_max_tasks=2,
                             pinned_tasks="t3", preload=False), backbone=random_tiny())
    try:
        assert "t3" in _resident(c)  # pinned: loaded at start
        for rounds in range(2):
            for task in ("t0", "t1", "t2"):
                answer = c.post(f"/classify/{task}", content=image_bytes(), headers=PNG).json()
                assert answer["version"] == versions[task]
                resident = _resident(c)
                assert len(resident) <= 2 and "t3" in resident and task in resident, (rounds, task, resident)
        samples = metric_samples(c)
        cold = sum(v for (name, _), v in samples.items() if name == "promptserve_cold_loads_total")
        assert cold == 6 and samples[("promptserve_evictions_total", ())] == 5
    finally:
        c.__exit__(None, None, None)


def _resident(client) -> set[str]:
    return {t["task"] for t in client.get("/tasks").json()["tasks"] if t["resident"]}


def test_readyz_reports_a_backbone_that_cannot_load(tmp_path):
    c = TestClient(create_app(ServerSettings(backbone=str(tmp_path / "missing.safetensors"), store=str(tmp_path),
                                             admin_token=ADMIN)))
    with c:
        r = wait_until(lambda: (r := c.get("/readyz")).json()["status"] == "failed" and r, 30, what="failure")
        assert r.status_code == 503 and "promptserve pretrain" in r.json()["detail"]
        blocked = c.post("/classify/x", content=image_bytes(), headers=PNG)
        assert blocked.status_code == 503 and blocked.json()["error"] == "not_ready"
        assert c.get("/healthz").status_code == 503  # liveness fails too: restart, don't linger


def test_generated_admin_token_is_logged_once_and_works(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="promptserve.server")
    app = create_app(ServerSettings(backbone="random-tiny", store=str(tmp_path)), backbone=random_tiny())
    printed = [r.getMessage() for r in caplog.records if "generated one" in r.getMessage()]
    assert len(printed) == 1 and printed[0].startswith("no admin token configured")
    token = printed[0].rsplit(" ", 1)[-1]
    with TestClient(app) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        assert upload(c, "tok", prompt_set_bytes(40), headers={}).status_code == 401
        assert upload(c, "tok", prompt_set_bytes(40), headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert sum("generated one" in r.getMessage() for r in caplog.records) == 1


def test_api_token_guards_classify(tmp_path):
    c = start(ServerSettings(backbone="random-tiny", store=str(tmp_path), admin_token=ADMIN, api_token="reader"),
              backbone=random_tiny())
    try:
        upload(c, "guarded", prompt_set_bytes(41))
        assert c.post("/classify/guarded", content=image_bytes(), headers=PNG).status_code == 401
        bad = c.post("/classify/guarded", content=image_bytes(), headers={**PNG, "Authorization": "Bearer nope"})
        assert bad.status_code == 403
        ok = c.post("/classify/guarded", content=image_bytes(), headers={**PNG, "Authorization": "Bearer reader"})
        assert ok.status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_a_failing_task_does_not_fail_its_batch_neighbours(client, monkeypatch):
    """If a mixed batch's forward fails, each task's images are rerun alone: only the failing task's fail."""
    from server.batcher import ItemResult, WorkItem

    for task, seed in (("good", 90), ("bad", 91)):
        upload(client, task, prompt_set_bytes(seed))
        client.post(f"/classify/{task}", content=image_bytes(), headers=PNG)  # resident
    engine = client.app.state.server.engine
    forward = engine._forward

    def fail_for_bad(items, start):
        if any(item.task == "bad" for item in items):
            raise RuntimeError("bad task exploded")
        return forward(items, start)

    monkeypatch.setattr(engine, "_forward", fail_for_bad)
    pixels = image_to_uint8(image_bytes(), 32)
    items = [WorkItem(task, pixels, 3, future=None) for task in ("good", "bad", "good")]
    results, _, _ = engine._forward_isolated(items)
    assert isinstance(results[0], ItemResult) and isinstance(results[2], ItemResult)
    assert isinstance(results[1], RuntimeError)
    assert client.post("/classify/good", content=image_bytes(), headers=PNG).status_code == 200
