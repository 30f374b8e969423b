"""Every bad input of issue 6 point 4 gets its status and a message that says why, and changes nothing:
the task keeps its current version, its history and its answers (docs/design.md, the promises)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save

from prompt_store import open_store
from promptserve.promptset import FORMAT, PromptSet
from server.app import create_app
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
IMAGE_LIMIT = 20_000  # bytes (max_image_mib below)
# the limits these tests probe; test_ray_serve.py runs the same tests against Ray Serve with them
LIMITS = dict(admin_token=ADMIN, max_upload_mib=0.1, max_image_mib=IMAGE_LIMIT / 2**20, max_image_pixels=1_000_000,
              queue_limit=4, max_images_per_request=8, max_wait_ms=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = tmp_path_factory.mktemp("registry")
    settings = ServerSettings(backbone="random-tiny", store=str(store), **LIMITS)
    client = TestClient(create_app(settings, backbone=random_tiny()))
    with client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 60)
        version = client.put("/tasks/stable", content=prompt_set_bytes(1), headers=AUTH).json()["version"]
        yield client, version, str(store)


def snapshot(client) -> tuple:
    detail = client.get("/tasks/stable").json()
    answer = client.post("/classify/stable", content=image_bytes(), headers=PNG).json()
    tasks = sorted(t["task"] for t in client.get("/tasks").json()["tasks"])
    return detail["current"]["version"], [h["version"] for h in detail["history"]], answer["version"], tasks


def variant(**changes) -> bytes:
    """The good prompt set of seed 1 with one thing broken."""
    ps = PromptSet.load(prompt_set_bytes(1))
    tensors = dict(ps.tensors)
    tensors.update(changes.pop("tensors", {}))
    for name in changes.pop("drop", ()):
        tensors.pop(name)
    ps = PromptSet(tensors=tensors, **{**{k: getattr(ps, k) for k in ("backbone_fingerprint", "backbone", "labels",
                                                                      "method", "config", "metrics")}, **changes})
    return ps.to_bytes()


def raw_safetensors(tensors: dict, **meta) -> bytes:
    return save(tensors, metadata={"format": FORMAT, **meta})


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "GIF")
    return buf.getvalue()


def flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


D = 64  # tiny backbone width
UPLOADS = [
    # (id, body, headers, status, error, words in the message)
    ("no_token", lambda: prompt_set_bytes(2), {}, 401, "unauthorized", "Authorization: Bearer"),
    ("wrong_token", lambda: prompt_set_bytes(2), {"Authorization": "Bearer wrong"}, 403, "forbidden", "admin token"),
    ("garbage", lambda: b"definitely not safetensors", AUTH, 422, "format", "not a safetensors file"),
    ("empty", lambda: b"", AUTH, 422, "empty_body", "empty"),
    ("fingerprint", lambda: variant(backbone_fingerprint="0" * 64), AUTH, 409, "fingerprint", "retrain"),
    ("no_fingerprint", lambda: variant(backbone_fingerprint=""), AUTH, 409, "fingerprint", "missing"),
    ("head_shape", lambda: variant(tensors={"head.weight": torch.zeros(3, 32)}), AUTH, 422, "shape", "head.weight"),
    ("kv_shape", lambda: variant(tensors={"kv.0": torch.zeros(5, 2, 32)}), AUTH, 422, "shape", "kv.0"),
    ("layer_range", lambda: variant(tensors={"visual.7": torch.zeros(2, D)}), AUTH, 422, "shape", "layers 0..1"),
    ("nan", lambda: variant(tensors={"visual.0": torch.full((2, D), float("nan"))}), AUTH, 422, "non_finite", "NaN"),
    ("inf", lambda: variant(tensors={"head.bias": torch.tensor([0.0, float("inf"), 0.0])}), AUTH, 422,
     "non_finite", "Inf"),
    ("labels", lambda: variant(labels=["only", "two"]), AUTH, 422, "labels", "2 labels for a head of 3"),
    ("no_head", lambda: variant(drop=["head.bias"]), AUTH, 422, "missing_tensor", "head.bias"),
    ("int_dtype", lambda: raw_safetensors({"head.weight": torch.zeros(3, D, dtype=torch.int32),
                                            "head.bias": torch.zeros(3)}), AUTH, 422, "dtype", "float32"),
    ("odd_tensor", lambda: raw_safetensors({"head.weight": torch.zeros(3, D), "head.bias": torch.zeros(3),
                                             "weights.0": torch.zeros(1)}), AUTH, 422, "format", "weights.0"),
    ("wrong_format_tag", lambda: save({"head.weight": torch.zeros(3, D), "head.bias": torch.zeros(3)},
                                      metadata={"format": "other/1"}), AUTH, 422, "format", "unknown format"),
    ("too_large", lambda: b"x" * 120_000, AUTH, 413, "too_large", "limit"),
]


@pytest.mark.parametrize("case", UPLOADS, ids=[c[0] for c in UPLOADS])
def test_refused_upload_changes_nothing(env, case):
    client, v1, _ = env
    _, body, headers, status, error, words = case
    before = snapshot(client)
    r = client.put("/tasks/stable", content=body(), headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert words in r.json()["detail"]
    assert snapshot(client) == before and before[0] == before[2] == v1


@pytest.mark.parametrize("name", ["Stable", "-lead", "a" * 65, "sp ace", "caf\u00e9", "x!y"])
def test_bad_task_name_is_refused(env, name):
    client, _, _ = env
    before = snapshot(client)
    r = client.put(f"/tasks/{name}", content=prompt_set_bytes(3), headers=AUTH)
    assert r.status_code in (404, 422) and snapshot(client) == before
    if r.status_code == 422:  # 404 only when the router itself cannot match the path
        assert r.json()["error"] == "invalid_task_name" and "task name" in r.json()["detail"]


def _bad_classify():
    too_big = image_bytes(5, size=(120, 120))
    assert len(too_big) > IMAGE_LIMIT
    ok = image_bytes(1)
    return [
        ("unknown_task", "/classify/nope", dict(content=ok, headers=PNG), 404, "unknown_task", "nope"),
        ("bad_name", "/classify/NOPE", dict(content=ok, headers=PNG), 422, "invalid_task_name", "task name"),
        ("text_body", "/classify/stable", dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
         "unsupported_media_type", "image/png"),
        ("gif", "/classify/stable", dict(content=gif(), headers=PNG), 415, "unsupported_image", "JPEG, PNG"),
        ("garbage", "/classify/stable", dict(content=b"\x00garbage" * 10, headers=PNG), 415, "unsupported_image",
         "not a"),
        ("truncated", "/classify/stable", dict(content=ok[: len(ok) // 2], headers=PNG), 422, "undecodable_image",
         "cannot be"),
        ("empty", "/classify/stable", dict(content=b"", headers=PNG), 422, "empty_image", "empty"),
        ("bomb_header", "/classify/stable", dict(content=png_header_only(60_000, 60_000), headers=PNG), 422,
         "decompression_bomb", "pixels"),
        ("too_many_pixels", "/classify/stable", dict(content=flat_png(1100, 1000), headers=PNG), 422,
         "decompression_bomb", "1100000"),
        ("image_bytes", "/classify/stable", dict(content=too_big, headers=PNG), 413, "too_large", "limit"),
        ("part_bytes", "/classify/stable", dict(files={"file": ("big.png", too_big)}), 413, "image_too_large",
         "big.png"),
        ("no_part", "/classify/stable", dict(data={"note": "hi"}, files={"other": ("a.txt", b"x")}), 422, "no_image",
         "`file`"),
        ("one_bad_of_many", "/classify/stable", dict(files=[("files", ("a.png", ok)), ("files", ("b.gif", gif()))]),
         415, "unsupported_image", "files[1] (b.gif)"),
        ("too_many_images", "/classify/stable", dict(files=[("files", (f"{i}.png", ok)) for i in range(9)]), 413,
         "too_many_images", "limit is 8"),
        ("queue_full", "/classify/stable", dict(files=[("files", (f"{i}.png", ok)) for i in range(5)]), 503,
         "queue_full", "retry"),
        ("top_k", "/classify/stable?top_k=0", dict(content=ok, headers=PNG), 422, "invalid_request", "top_k"),
    ]


@pytest.mark.parametrize("case", _bad_classify(), ids=[c[0] for c in _bad_classify()])
def test_bad_classify_request(env, case):
    client, v1, _ = env
    _, path, kwargs, status, error, words = case
    r = client.post(path, **kwargs)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert words in r.json()["detail"]
    if status == 503:
        assert r.headers["retry-after"] == "1"
    assert snapshot(client)[0] == v1  # and the server still answers


def test_bad_admin_requests_change_nothing(env):
    client, v1, _ = env
    before = snapshot(client)
    unknown = client.post("/tasks/stable/rollback", json={"version": "ab" * 32}, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_version"
    assert client.post("/tasks/stable/rollback", json={"version": v1}).status_code == 401
    assert client.post("/tasks/stable/rollback", json={}, headers=AUTH).status_code == 422
    assert client.delete("/tasks/stable").status_code == 401
    assert client.delete("/tasks/stable", headers={"Authorization": "Bearer x"}).status_code == 403
    assert client.delete("/tasks/never-was", headers=AUTH).status_code == 404
    json_headers = {**AUTH, "content-type": "application/json"}
    assert client.post("/tasks/stable/rollback", content=b"x" * 70_000, headers=json_headers).status_code == 413
    assert snapshot(client) == before


def test_store_change_that_does_not_validate_is_not_served(env):
    """A version put straight into the store (the store checks headers, not fingerprints) is refused by
    the server: the old version keeps serving, and rolling back to it over the API is refused too."""
    client, _, store_dir = env
    good = client.put("/tasks/sneaky", content=prompt_set_bytes(7), headers=AUTH).json()["version"]
    assert client.post("/classify/sneaky", content=image_bytes(), headers=PNG).json()["version"] == good
    bad = variant(backbone_fingerprint="f" * 64)
    with open_store(store_dir) as store:
        bad_version = store.put("sneaky", bad).version
    refusals = 'promptserve_upload_refusals_total{reason="store_event_fingerprint"} 1.0'
    wait_until(lambda: refusals in client.get("/metrics").text, 10, what="the store event to be refused")
    assert client.post("/classify/sneaky", content=image_bytes(), headers=PNG).json()["version"] == good
    back = client.post("/tasks/sneaky/rollback", json={"version": bad_version}, headers=AUTH)
    assert back.status_code == 409 and back.json()["error"] == "fingerprint"
    assert json.loads(client.get("/tasks/sneaky").content)["resident_version"] == good
