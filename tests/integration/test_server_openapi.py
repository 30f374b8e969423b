"""The OpenAPI schema is the truth (issue 12 point 12): schemathesis sends schema-derived (and schema-violating)
requests to every operation of the app, with the admin token, and checks every answer: no 5xx, every status
documented, every body conforming to its documented schema. Short and bounded: a few examples per operation."""

from __future__ import annotations

import tempfile
from collections import Counter

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, reject, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server.app import create_app
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, prompt_set_bytes, random_tiny, wait_until

EXAMPLES_PER_OPERATION = 25
# bodies whose schema cannot say what is acceptable: any bytes (a prompt set, an image), or an inference request
# whose tensors must also agree with each other (shape and element count, base64 images)
BINARY_BODIES = ("/tasks/{task}", "/classify/{task}", "/v2/models/{task}/infer",
                 "/v2/models/{task}/versions/{version}/infer")

_app = create_app(ServerSettings(backbone="random-tiny", store=tempfile.mkdtemp(prefix="promptserve-openapi-"),
                                 admin_token=ADMIN, max_wait_ms=1, request_timeout_s=10),
                  backbone=random_tiny())
# from the app's schema itself: loading it over ASGI would run the app's lifespan in another event loop
schema = schemathesis.openapi.from_dict(_app.openapi())
_started: list[TestClient] = []
_answers: Counter[tuple[str, int]] = Counter()  # (operation, status) -> requests, printed at the end (-s)


def ready_app():
    """Start the app's lifespan once (the backbone, the store, a task to classify with)."""
    if not _started:
        client = TestClient(_app, raise_server_exceptions=False).__enter__()
        wait_until(lambda: client.get("/readyz").status_code == 200, 60)
        assert client.put("/tasks/demo", content=prompt_set_bytes(1), headers=AUTH).status_code == 200
        _started.append(client)
    return _app


def teardown_module():
    print(f"\nschemathesis: {sum(_answers.values())} requests, {len({op for op, _ in _answers})} operations, "
          f"{sum(n for (_, status), n in _answers.items() if status >= 500)} answered 5xx")
    for (operation, status), n in sorted(_answers.items()):
        print(f"  {operation:34s} {status}: {n}")
    for client in _started:
        client.__exit__(None, None, None)


def test_the_path_pattern_is_documented():
    ready_app()
    spec = _started[0].get("/openapi.json").json()
    parameter = spec["paths"]["/classify/{task}"]["post"]["parameters"][0]
    assert parameter["name"] == "task" and parameter["schema"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,63}$"


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case):
    ready_app()
    # through the one started client: schemathesis' own ASGI call would run the app's lifespan per request
    try:
        response = _started[0].request(**case.as_transport_kwargs(base_url="http://testserver", headers=AUTH))
        response.request.read()  # multipart bodies are streamed; the checks read them to report a failing case
    except (AttributeError, TypeError):  # a generated multipart "file" the HTTP client cannot encode (an int)
        reject()
    _answers[(f"{case.method.upper()} {case.operation.path}", response.status_code)] += 1
    # A binary body (a prompt set, an image) is schema-valid as any bytes, so "schema-valid data is accepted"
    # cannot hold there; every other check (no 5xx, documented statuses and bodies) runs on every operation.
    binary = case.operation.path in BINARY_BODIES and case.method.upper() in ("PUT", "POST")
    case.validate_response(response, excluded_checks=[positive_data_acceptance] if binary else None)
