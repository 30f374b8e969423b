"""A real `promptserve serve` process (uvicorn) on a free loopback port, driven over HTTP with httpx:
the CLI round trip, an upload while 8 clients classify, chunked bodies, metrics."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import typer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import server.cli
from tests.integration.server_utils import ADMIN, AUTH, ServerProcess, image_bytes, prompt_set_bytes, wait_until

PNG = {"content-type": "image/png"}
CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 150
LOAD_DEADLINE_S = 45.0


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    proc = ServerProcess(tmp, str(tmp / "registry"), "--max-wait-ms", "2", "--max-batch", "16",
                         "--max-upload-mib", "1").start()
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    for name in ("serve", "classify", "push"):
        app.command(name)(getattr(server.cli, name))
    return app


def test_cli_push_then_classify(live, tmp_path):
    path = tmp_path / "cats.safetensors"
    path.write_bytes(prompt_set_bytes(50, classes=4))
    images = []
    for seed in range(2):
        images.append(tmp_path / f"img{seed}.png")
        images[-1].write_bytes(image_bytes(seed))
    runner = CliRunner()
    pushed = runner.invoke(cli(), ["push", str(path), "--task", "cats", "--url", live.url, "--token", ADMIN])
    assert pushed.exit_code == 0, pushed.output
    version = pushed.output.split(" -> ")[1].split()[0]
    out = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli(), ["classify", *map(str, images), "--task", "cats", "--url", live.url, "--top-k", "2"])
    assert out.exit_code == 0, out.output
    assert f"2 images, task cats @ {version[:12]}" in out.output, out.output  # the table's title
    rows = [line for line in out.output.splitlines() if "img" in line]
    assert len(rows) == 2 and all("s50-c" in row for row in rows), out.output
    refused = runner.invoke(cli(), ["push", str(images[0]), "--task", "cats", "--url", live.url, "--token", ADMIN])
    assert refused.exit_code == 1 and "HTTP 422" in refused.output
    missing = runner.invoke(cli(), ["classify", str(images[0]), "--task", "nope", "--url", live.url])
    assert missing.exit_code == 1 and "HTTP 404" in missing.output


def test_single_and_multi_image_over_http(live):
    httpx.put(f"{live.url}/tasks/pair", content=prompt_set_bytes(51), headers=AUTH).raise_for_status()
    one = httpx.post(f"{live.url}/classify/pair", content=image_bytes(3), headers=PNG).json()
    many = httpx.post(f"{live.url}/classify/pair", files=[("files", (f"{i}.png", image_bytes(i))) for i in (2, 3)])
    assert many.status_code == 200 and [a["version"] for a in many.json()] == [one["version"]] * 2
    second = many.json()[1]["predictions"]
    assert [p["index"] for p in second] == [p["index"] for p in one["predictions"]]
    assert [p["score"] for p in second] == pytest.approx([p["score"] for p in one["predictions"]], abs=1e-5)


def test_chunked_upload_over_the_limit_is_cut_off(live):
    def body():
        for _ in range(20):  # 1.25 MiB against the 1 MiB upload limit, with no Content-Length
            yield b"\0" * 65536

    r = httpx.put(f"{live.url}/tasks/chunky", content=body(), headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert httpx.get(f"{live.url}/tasks/chunky").status_code == 404


def test_upload_while_eight_clients_classify(live):
    """Zero failed requests; each client sees the hot task's version only move forward; a request sent
    after the upload answered is served by the new version. Odd clients alternate with a second task so
    batches mix tasks; a ninth client sends broken images that must not fail anyone else."""
    v1 = httpx.put(f"{live.url}/tasks/hot", content=prompt_set_bytes(60), headers=AUTH).json()["version"]
    v_other = httpx.put(f"{live.url}/tasks/other", content=prompt_set_bytes(61), headers=AUTH).json()["version"]
    stop, start_time = threading.Event(), time.monotonic()
    logs: list[list[tuple[str, int, str, float]]] = [[] for _ in range(CLIENTS)]  # (task, status, version, sent)
    errors: list[str] = []
    upload_done = [float("inf")]

    def client(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if stop.is_set() or time.monotonic() - start_time > LOAD_DEADLINE_S:
                    return
                task = "other" if i % 2 and n % 2 else "hot"
                sent = time.monotonic()
                try:
                    r = http.post(f"/classify/{task}", content=image_bytes(i), headers=PNG)
                    logs[i].append((task, r.status_code, r.json().get("version", r.text), sent))
                except httpx.HTTPError as e:
                    errors.append(f"client {i}: {e!r}")

    def vandal() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            while not stop.is_set() and time.monotonic() - start_time < LOAD_DEADLINE_S:
                r = http.post("/classify/hot", content=image_bytes(0)[:40], headers=PNG)
                if r.status_code not in (415, 422):
                    errors.append(f"broken image answered {r.status_code}: {r.text}")
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)] + [threading.Thread(target=vandal)]
    for t in threads:
        t.start()
    try:
        hot_answers = lambda: sum(1 for log in logs for e in log if e[0] == "hot")  # noqa: E731
        wait_until(lambda: hot_answers() >= 3 * CLIENTS, 30, what="every client's answers")
        v2 = httpx.put(f"{live.url}/tasks/hot", content=prompt_set_bytes(62), headers=AUTH, timeout=30)
        upload_done[0] = time.monotonic()
        assert v2.status_code == 200, v2.text
        v2 = v2.json()["version"]
        after = lambda: min(sum(1 for e in log if e[0] == "hot" and e[3] > upload_done[0]) for log in logs)  # noqa: E731
        wait_until(lambda: after() >= 3, 30, what="answers after the upload")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:5]
    failed = [e for log in logs for e in log if e[1] != 200]
    assert not failed, failed[:5]
    for i, log in enumerate(logs):
        hot = [version for task, _, version, _ in log if task == "hot"]
        assert set(hot) <= {v1, v2}
        assert hot == sorted(hot, key=lambda v: v == v2), f"client {i} went back to the old version: {hot}"
        assert all(version == v2 for task, _, version, sent in log if task == "hot" and sent > upload_done[0])
        assert all(version == v_other for task, _, version, _ in log if task == "other")
    assert sum(len(log) for log in logs) >= 6 * CLIENTS
    batches = _samples(live, "promptserve_batch_tasks")
    assert batches["promptserve_batch_tasks_count"] > batches.get("promptserve_batch_tasks_bucket{le=1.0}", 0), \
        "no batch mixed the two tasks"


def test_metrics_over_http(live):
    httpx.put(f"{live.url}/tasks/m", content=prompt_set_bytes(70), headers=AUTH).raise_for_status()
    before = _samples(live, "promptserve_classify_requests")
    for _ in range(2):
        httpx.post(f"{live.url}/classify/m", content=image_bytes(), headers=PNG).raise_for_status()
    after = _samples(live, "promptserve_classify_requests")
    key = "promptserve_classify_requests_total{status=200,task=m}"
    assert after[key] - before.get(key, 0) == 2


def _samples(live, family_name: str) -> dict[str, float]:
    text = httpx.get(f"{live.url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == family_name:
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
