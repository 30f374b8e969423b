"""A live app with `dtype auto` (issue 22): /readyz says which precision runs, what backend, and why; bf16 is
forced as a candidate so the path is exercised on any CPU, and the choice follows what was measured."""

from __future__ import annotations

from fastapi.testclient import TestClient
from PIL import Image
from server_utils import ADMIN, AUTH, image_bytes, prompt_set_bytes, random_tiny, wait_until

from server import precision
from server.app import create_app
from server.settings import ServerSettings


def test_readyz_reports_the_auto_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32", "bfloat16"])
    probe = tmp_path / "probe"
    probe.mkdir()
    for i in range(24):
        Image.new("RGB", (40, 30), (10 * i, 255 - 10 * i, 90)).save(probe / f"{i}.png")
    settings = ServerSettings(backbone="random-tiny", store=str(tmp_path / "registry"), admin_token=ADMIN,
                              dtype="auto", probe_dir=str(probe), max_wait_ms=1)
    from prompt_store import LocalStore

    LocalStore(tmp_path / "registry").put("t", prompt_set_bytes(1))
    with TestClient(create_app(settings, backbone=random_tiny().clone()), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        ready = c.get("/readyz").json()
        assert ready["backend"] == "torch" and ready["dtype"] in ("float32", "bfloat16")
        report = ready["precision"]
        assert report["probe_images"] == 24 and report["dtype"] == ready["dtype"]
        trials = {t["dtype"]: t for t in report["trials"]}
        assert trials[ready["dtype"]]["kept"] and trials["bfloat16"]["speedup"] > 0 and all(t["why"] for t in
                                                                                             trials.values())
        r = c.post("/classify/t", content=image_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200
        assert c.put("/tasks/u", content=prompt_set_bytes(2), headers=AUTH).status_code == 200


def test_a_set_dtype_reports_no_auto_measurement(tmp_path):
    settings = ServerSettings(backbone="random-tiny", store=str(tmp_path / "registry"), admin_token=ADMIN,
                              dtype="float32")
    with TestClient(create_app(settings, backbone=random_tiny()), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        ready = c.get("/readyz").json()
        assert (ready["dtype"], ready["backend"], ready["precision"]) == ("float32", "torch", None)
