"""The API reads well to a generated client: every operation has a chosen operationId (not FastAPI's
path-derived `classify_classify__task__post`), and /classify's one documented rule for its answer's shape
holds: the request's form picks it (object for one image, list for `files`), never the image count."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, image_bytes, prompt_set_bytes, random_tiny, wait_until

OPERATION_IDS = {
    ("post", "/classify/{task}"): "classify",
    ("get", "/tasks"): "list_tasks",
    ("put", "/tasks/{task}"): "put_task",
    ("get", "/tasks/{task}"): "get_task",
    ("delete", "/tasks/{task}"): "delete_task",
    ("post", "/tasks/{task}/rollback"): "rollback_task",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/metrics"): "metrics",
    ("get", "/ui/live.json"): "live_stats",
    # the Open Inference Protocol (server/oip_http.py)
    ("get", "/v2"): "oip_server_metadata",
    ("get", "/v2/health/live"): "oip_server_live",
    ("get", "/v2/health/ready"): "oip_server_ready",
    ("get", "/v2/models/{task}"): "oip_model_metadata",
    ("get", "/v2/models/{task}/versions/{version}"): "oip_model_version_metadata",
    ("get", "/v2/models/{task}/ready"): "oip_model_ready",
    ("get", "/v2/models/{task}/versions/{version}/ready"): "oip_model_version_ready",
    ("get", "/v2/models/{task}/config"): "oip_model_config",
    ("post", "/v2/models/{task}/infer"): "oip_infer",
    ("post", "/v2/models/{task}/versions/{version}/infer"): "oip_version_infer",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = ServerSettings(backbone="random-tiny", store=str(tmp_path_factory.mktemp("registry")),
                              admin_token=ADMIN, max_wait_ms=1)
    with TestClient(create_app(settings, backbone=random_tiny())) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60, what="readyz 200")
        assert c.put("/tasks/shapes", content=prompt_set_bytes(3), headers=AUTH).status_code == 200
        yield c


def test_every_operation_has_a_chosen_operation_id(client):
    spec = client.get("/openapi.json").json()
    found = {(method, path): op.get("operationId") for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert found == OPERATION_IDS  # a new route needs its operation_id= (and a line here)


def test_classify_answer_shape_follows_the_request_form(client):
    one, two = image_bytes(1, (32, 32)), image_bytes(2, (32, 32))
    raw = client.post("/classify/shapes", content=one, headers={"content-type": "image/png"}).json()
    single_file = client.post("/classify/shapes", files={"file": ("a.png", one)}).json()
    single_files = client.post("/classify/shapes", files=[("files", ("a.png", one))]).json()
    two_files = client.post("/classify/shapes", files=[("files", ("a.png", one)), ("files", ("b.png", two))]).json()
    assert isinstance(raw, dict) and isinstance(single_file, dict)
    assert isinstance(single_files, list) and len(single_files) == 1 and len(two_files) == 2
    assert raw["predictions"] == single_file["predictions"] == single_files[0]["predictions"]
    both = client.post("/classify/shapes", files=[("file", ("a.png", one)), ("files", ("b.png", two))])
    assert both.status_code == 422 and both.json()["error"] == "several_file_parts"
    description = client.get("/openapi.json").json()["paths"]["/classify/{task}"]["post"]["description"]
    assert "`file`" in description and "`files`" in description and "list" in description
