"""Property tests (Hypothesis) of the one prompt-set parser: valid files mutated in their header (shapes, offsets,
dtypes, nesting, JSON types, lengths) are either valid or refused with a 4xx that says why; never a 500, and
nothing refused is stored. Run against the registry (no torch) and the server's upload route."""

from __future__ import annotations

import json
import struct
from functools import cache

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_store import InvalidPromptSet, LocalStore, TooLarge
from promptserve.promptset import PromptSet, PromptSetError
from server.app import create_app
from server.settings import ServerSettings
from tests.integration.server_utils import ADMIN, AUTH, prompt_set_bytes, random_tiny, wait_until

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@cache
def valid_blob(seed: int) -> bytes:
    return prompt_set_bytes(seed)


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict | str, body: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + body


@st.composite
def mutated(draw) -> bytes:
    """A valid prompt set of the tiny backbone with one or two things in its header (or bytes) broken."""
    header, body = split(valid_blob(draw(st.integers(0, 3))))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["shape", "offsets", "dtype", "field", "meta", "nest", "drop", "rename",
                                     "bytes"]))
        names = sorted(k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
        if not names:
            break
        name = draw(st.sampled_from(names))
        if kind == "shape":
            header[name]["shape"] = draw(json_values | st.lists(st.integers(-3, 10**6), max_size=4))
        elif kind == "offsets":
            header[name]["data_offsets"] = draw(json_values | st.lists(st.integers(-10, 10**7), max_size=3))
        elif kind == "dtype":
            header[name]["dtype"] = draw(st.sampled_from(["F64", "I32", "BOOL", "f32", ""]) | json_values)
        elif kind == "field":
            header[name] = draw(json_values)
        elif kind == "meta":
            key = draw(st.sampled_from(["labels", "config", "metrics", "format", "backbone_fingerprint"]))
            header["__metadata__"][key] = draw(st.text(max_size=20) | json_values.map(json.dumps))
        elif kind == "nest":
            depth = draw(st.sampled_from([50, 5_000, 100_000]))
            nested = "[" * depth + "]" * depth
            if draw(st.booleans()):
                header["__metadata__"][draw(st.sampled_from(["labels", "config"]))] = nested
            else:
                return join(json.dumps(header)[:-1] + f', "x": {nested}}}', body)
        elif kind == "drop":
            header.pop(name)
        elif kind == "rename":
            header[draw(st.sampled_from(["visual.1", "kv.7", "visual.0", "key.0", "head.x"]))] = header.pop(name)
        else:
            blob = join(header, body)
            cut = draw(st.integers(0, len(blob)))
            return blob[:cut] + draw(st.binary(max_size=16))
    return join(header, body)


@EXAMPLES
@given(blob=mutated())
def test_the_registry_refuses_or_stores_never_crashes(tmp_path_factory, blob):
    store = LocalStore(tmp_path_factory.mktemp("fuzz"))
    try:
        store.put("t", blob)
    except (InvalidPromptSet, TooLarge) as e:
        assert str(e)
        assert store.list() == [] and list(store.blobs.iterdir()) == []
    try:
        PromptSet.load(blob).validate(random_tiny())
    except PromptSetError as e:
        assert 400 <= e.http_status < 500 and str(e)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings_ = ServerSettings(backbone="random-tiny", store=str(tmp_path_factory.mktemp("registry")),
                               admin_token=ADMIN, max_wait_ms=1)
    with TestClient(create_app(settings_, backbone=random_tiny()), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60)
        assert c.put("/tasks/t", content=prompt_set_bytes(0), headers=AUTH).status_code == 200
        yield c


@EXAMPLES
@given(blob=mutated())
def test_an_upload_is_4xx_or_valid_never_500_and_nothing_refused_is_stored(client, blob):
    before = client.get("/tasks/t").json()
    r = client.put("/tasks/t", content=blob, headers=AUTH)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    if r.status_code != 200:
        assert body["error"] and body["detail"]
        assert client.get("/tasks/t").json() == before
        assert "Connection" not in r.headers or r.headers["Connection"] != "close"
