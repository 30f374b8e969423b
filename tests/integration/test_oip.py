"""The Open Inference Protocol (KServe v2) driven by Triton's own clients, tritonclient.http and tritonclient.grpc,
against a real `promptserve serve --grpc-port` on the demo backbone and demo tasks: metadata, readiness, infer of
real images (the same answers as /classify for the same images and version), the classification extension, a
specific version, an unknown task, a bad image, and auth by the same tokens."""

from __future__ import annotations

import base64
import os
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.settings import DEMO_BACKBONE
from tests.integration.server_utils import ADMIN, AUTH, REPO, ServerProcess, image_bytes, prompt_set_bytes
from tests.store_utils import free_port

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http,grpc] is in the [dev] extra")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is in the [dev] extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

GTSRB = REPO.parent / "shared" / "datasets" / "gtsrb.tar"


def _server(tmp: Path, *extra: str, backbone: str = "random-tiny", name: str = "oip") -> ServerProcess:
    server = ServerProcess(tmp, str(tmp / f"{name}-registry"), "--grpc-port", str(free_port()), *extra, name=name)
    server.args[server.args.index("random-tiny")] = backbone
    server.grpc_url = f"127.0.0.1:{server.args[server.args.index('--grpc-port') + 1]}"
    return server.start().wait_ready()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    server = _server(tmp_path_factory.mktemp("oip"), "--seed-from", str(REPO / "assets" / "tasks"),
                     backbone=str(DEMO_BACKBONE), name="demo")
    try:
        yield server
    finally:
        server.stop()


def clients(server):
    return [(th, th.InferenceServerClient(server.url.removeprefix("http://"))),
            (tg, tg.InferenceServerClient(server.grpc_url))]


def real_images(n: int) -> list[bytes]:
    """gtsrb test images from ../shared/datasets (PNG files), or generated ones where it is absent."""
    if not GTSRB.is_file():
        return [image_bytes(seed, (32, 32)) for seed in range(n)]
    with tarfile.open(GTSRB) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/test/" in m.name][::97][:n]
        return [tar.extractfile(m).read() for m in members]


def image_input(mod, images: list[bytes]):
    """Raw bytes go in binary (tritonclient's default; its JSON form takes UTF-8 text only: see the base64 test)."""
    tensor = mod.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def version_of(mod, result) -> str:
    response = result.get_response()
    return response["model_version"] if mod is th else response.model_version


def test_metadata_and_readiness(demo):
    for mod, client in clients(demo):
        assert client.is_server_live() and client.is_server_ready()
        server = client.get_server_metadata()
        meta = client.get_model_metadata("gtsrb")
        current = httpx.get(f"{demo.url}/tasks/gtsrb", timeout=10).json()["current"]["version"]
        if mod is tg:
            server = {"name": server.name, "extensions": list(server.extensions)}
            meta = {"name": meta.name, "versions": list(meta.versions), "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs]}
        assert server["name"] == "promptserve" and "binary_tensor_data" in server["extensions"]
        assert meta["name"] == "gtsrb" and meta["versions"] == [current]
        assert meta["outputs"][0] == {"name": "SCORES", "datatype": "FP32", "shape": [-1, 43]}
        assert client.is_model_ready("gtsrb") and client.is_model_ready("gtsrb", current)
        assert not client.is_model_ready("no-such-task")


def test_infer_answers_what_classify_answers(demo):
    images = real_images(6)
    classify = httpx.post(f"{demo.url}/classify/gtsrb", params={"top_k": 43},
                          files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)], timeout=60)
    assert classify.status_code == 200, classify.text
    expected = np.zeros((len(images), 43), np.float32)
    for i, answer in enumerate(classify.json()):
        for p in answer["predictions"]:
            expected[i, p["index"]] = p["score"]
    version = classify.json()[0]["version"]
    top1 = [answer["predictions"][0]["label"].encode() for answer in classify.json()]
    for mod, client in clients(demo):
        for binary in ((True, False) if mod is th else (True,)):
            result = client.infer("gtsrb", [image_input(mod, images)], outputs=[  # binary or JSON outputs
                mod.InferRequestedOutput("SCORES", **({"binary_data": binary} if mod is th else {})),
                mod.InferRequestedOutput("LABEL", **({"binary_data": binary} if mod is th else {}))])
            scores = result.as_numpy("SCORES")
            assert scores.shape == (6, 43) and version_of(mod, result) == version
            np.testing.assert_allclose(scores, expected, atol=1e-5)  # /classify rounds nothing: same batch math
            labels = [x if isinstance(x, bytes) else x.encode() for x in result.as_numpy("LABEL")]  # JSON: str
            assert labels == top1
        ranked = client.infer("gtsrb", [image_input(mod, images)], outputs=[
            mod.InferRequestedOutput("SCORES", class_count=3)]).as_numpy("SCORES")
        assert ranked.shape == (6, 3)
        for row, answer in zip(ranked, classify.json(), strict=True):
            score, index, label = row[0].decode().split(":")
            best = answer["predictions"][0]
            assert (int(index), label) == (best["index"], best["label"]) and abs(float(score) - best["score"]) < 1e-5


def test_json_images_are_base64(demo):
    image = real_images(1)[0]
    body = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}], "outputs": [{"name": "LABEL"}]}
    r = httpx.post(f"{demo.url}/v2/models/gtsrb/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1]
    body["inputs"][0]["data"] = ["not base64!"]
    r = httpx.post(f"{demo.url}/v2/models/gtsrb/infer", json=body, timeout=30)
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_a_specific_version(demo):
    sets = [REPO / "assets" / "tasks" / f"{name}.safetensors" for name in ("dtd10", "sign-digits")]
    old, new = (httpx.put(f"{demo.url}/tasks/versions-test", content=p.read_bytes(), headers=AUTH, timeout=30)
                .json()["version"] for p in sets)  # two versions of one task: the second is served
    images = real_images(2)
    for mod, client in clients(demo):
        assert client.is_model_ready("versions-test", new) and not client.is_model_ready("versions-test", old)
        result = client.infer("versions-test", [image_input(mod, images)], model_version=new[:8])
        assert version_of(mod, result) == new
        with pytest.raises(InferenceServerException, match="not the one served"):
            client.infer("versions-test", [image_input(mod, images)], model_version=old)
        with pytest.raises(InferenceServerException, match="no version"):
            client.infer("versions-test", [image_input(mod, images)], model_version="abcdef12")


def test_unknown_task_and_bad_image(demo):
    for mod, client in clients(demo):
        with pytest.raises(InferenceServerException, match="no task") as unknown:
            client.infer("no-such-task", [image_input(mod, real_images(1))])
        with pytest.raises(InferenceServerException, match="not a JPEG, PNG") as bad:
            client.infer("gtsrb", [image_input(mod, [b"not an image"])])
        if mod is th:
            assert (unknown.value.status(), bad.value.status()) == ("404", "400")
        else:
            assert (unknown.value.status(), bad.value.status()) == ("StatusCode.NOT_FOUND",
                                                                    "StatusCode.INVALID_ARGUMENT")
        with pytest.raises(InferenceServerException, match="unknown input"):
            wrong = mod.InferInput("PIXELS", [1], "BYTES")
            wrong.set_data_from_numpy(np.array([real_images(1)[0]], dtype=object))
            client.infer("gtsrb", [wrong])


def test_auth_by_the_same_tokens(tmp_path):
    token_file = tmp_path / "api-token"
    token_file.write_text("api-secret\n")
    server = _server(tmp_path, "--api-token-file", str(token_file), name="auth")
    try:
        httpx.put(f"{server.url}/tasks/t", content=prompt_set_bytes(3), headers=AUTH, timeout=30).raise_for_status()
        for mod, client in clients(server):
            assert client.is_server_live()  # the probes stay open, as /healthz and /readyz do
            with pytest.raises(InferenceServerException) as missing:
                client.infer("t", [image_input(mod, [image_bytes(0)])])
            with pytest.raises(InferenceServerException) as wrong:
                client.infer("t", [image_input(mod, [image_bytes(0)])], headers={"authorization": "Bearer nope"})
            if mod is th:
                assert (missing.value.status(), wrong.value.status()) == ("401", "403")
            else:
                assert (missing.value.status(), wrong.value.status()) == ("StatusCode.UNAUTHENTICATED",
                                                                          "StatusCode.PERMISSION_DENIED")
            for token in ("api-secret", ADMIN):
                result = client.infer("t", [image_input(mod, [image_bytes(0)])],
                                      headers={"authorization": f"Bearer {token}"})
                assert result.as_numpy("SCORES").shape == (1, 3)
    finally:
        server.stop()


def test_the_docs_example_runs_as_written(demo, tmp_path):
    import re
    import subprocess
    import sys

    text = (REPO / "docs" / "serving.md").read_text()
    block = re.search(r"<!-- oip-example.*?```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "stop.png").write_bytes(real_images(1)[0])
    script = block.replace("127.0.0.1:8000", demo.url.removeprefix("http://"))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    label, ranked, version = run.stdout.strip().splitlines()[0], run.stdout, run.stdout.strip().splitlines()[-1]
    assert label.startswith("[b'") and ranked.count(":") >= 6 and re.fullmatch(r"[0-9a-f]{64}", version)


PERF_ANALYZER = REPO / ".cache" / "perf-analyzer" / "perf_analyzer" / "bin" / "perf_analyzer"


@pytest.mark.skipif(not (PERF_ANALYZER.exists() or os.environ.get("PERF_ANALYZER")),
                    reason="perf_analyzer is not installed: `python benchmarks/perf_analyzer.py` installs it into "
                           ".cache/perf-analyzer/ (a 7 MB wheel, and Debian 13's C runtime where glibc < 2.38)")
def test_perf_analyzer_drives_both_protocols_without_errors(demo, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the benchmarks run as scripts: `import common`
    from benchmarks.perf_analyzer import input_data, perf_analyzer_command, request_image, run

    data = tmp_path / "input.json"
    input_data(data, request_image())
    for protocol, url in (("http", demo.url.removeprefix("http://")), ("grpc", demo.grpc_url)):
        (row,) = run(perf_analyzer_command(), protocol, url, data, [2], 1000, 50, tmp_path)
        assert row["errors"] == 0 and row["throughput"] > 0
