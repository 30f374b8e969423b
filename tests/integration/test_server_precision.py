"""A live app with `dtype auto` and `backend auto` (issue 22): /readyz says which precision runs, what backend, and
why; bf16 is forced as a candidate so the path is exercised on any CPU, and the choice follows what was measured.
An OpenVINO server answers what a torch server answers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server import precision
from server.app import create_app
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, image_bytes, prompt_set_bytes, random_tiny, wait_until


def probe_folder(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    for i in range(24):
        Image.new("RGB", (40, 30), (10 * i, 255 - 10 * i, 90)).save(probe / f"{i}.png")
    return probe


def serving(tmp_path, backbone=None, task: bytes | None = None, **settings):
    """A live app on random-tiny with `task` (default: a prompt set of seed 1) stored as t."""
    from prompt_store import LocalStore

    LocalStore(tmp_path / "registry").put("t", task or prompt_set_bytes(1))
    app = create_app(ServerSettings(backbone="random-tiny", store=str(tmp_path / "registry"), admin_token=ADMIN,
                                    **{"max_wait_ms": 1, **settings}), backbone=backbone or random_tiny())
    return TestClient(app, raise_server_exceptions=False)


def ready(c: TestClient) -> dict:
    wait_until(lambda: c.get("/readyz").status_code == 200, 60)
    return c.get("/readyz").json()


def test_readyz_reports_the_auto_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32", "bfloat16"])
    probe = str(probe_folder(tmp_path))
    with serving(tmp_path, random_tiny().clone(), dtype="auto", backend="torch", probe_dir=probe) as c:
        answer = ready(c)
        assert answer["backend"] == "torch" and answer["dtype"] in ("float32", "bfloat16")
        report = answer["precision"]
        assert report["probe_images"] == 24 and report["dtype"] == answer["dtype"]
        trials = {t["dtype"]: t for t in report["trials"]}
        assert trials[answer["dtype"]]["kept"] and trials["bfloat16"]["speedup"] > 0 and all(t["why"] for t in
                                                                                              trials.values())
        r = c.post("/classify/t", content=image_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200
        assert c.put("/tasks/u", content=prompt_set_bytes(2), headers=AUTH).status_code == 200


def test_readyz_reports_the_backend_auto_choice(tmp_path):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    with serving(tmp_path, dtype="float32", backend="auto", probe_dir=str(probe_folder(tmp_path))) as c:
        answer = ready(c)
        report = answer["precision"]
        assert answer["dtype"] == "float32" and (report["dtype"], report["backend"]) == ("float32", answer["backend"])
        trials = {(t["dtype"], t["backend"]): t for t in report["trials"]}
        assert set(trials) == {("float32", "torch"), ("float32", "openvino")}
        assert trials["float32", answer["backend"]]["kept"] and trials["float32", "openvino"]["speedup"] > 0
        r = c.post("/classify/t", content=image_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200


def test_an_openvino_server_answers_what_a_torch_server_answers(tmp_path):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    answers = {}
    first, second = prompt_set_bytes(1), prompt_set_bytes(5, classes=4)
    for backend in ("torch", "openvino"):
        # a wait long enough that each request's three images ride in one batch: one compiled shape
        with serving(tmp_path / backend, task=first, dtype="float32", backend=backend, max_wait_ms=500) as c:
            answer = ready(c)
            assert (answer["backend"], answer["precision"]) == (backend, None)
            engine = c.app.state.server.engine
            warmed = getattr(engine.backend, "compiled", None)  # start-up compiled the batch shapes it will serve
            assert warmed == (len(engine.backend.variants) if backend == "openvino" else None) != 0
            images = [("files", (f"{i}.png", image_bytes(i), "image/png")) for i in range(3)]
            r = c.post("/classify/t?top_k=3", files=images)
            compiled = getattr(engine.backend, "compiled", None)
            assert c.put("/tasks/t", content=second, headers=AUTH).status_code == 200
            swapped = c.post("/classify/t?top_k=3", files=images)  # a hot swap: new prompts, the same graph
            assert r.status_code == swapped.status_code == 200
            assert getattr(engine.backend, "compiled", None) == compiled == warmed  # nothing compiled on a request
            answers[backend] = [r.json(), swapped.json()]
    for expected, got in zip(answers["torch"], answers["openvino"], strict=True):
        for e, g in zip(expected, got, strict=True):
            assert e["version"] == g["version"]
            assert [p["label"] for p in e["predictions"]] == [p["label"] for p in g["predictions"]]
            assert [p["score"] for p in e["predictions"]] == pytest.approx([p["score"] for p in g["predictions"]],
                                                                            abs=1e-4)


def test_a_set_dtype_and_backend_report_no_auto_measurement(tmp_path):
    with serving(tmp_path, dtype="float32", backend="torch") as c:
        answer = ready(c)
        assert (answer["dtype"], answer["backend"], answer["precision"]) == ("float32", "torch", None)
