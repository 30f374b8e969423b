"""Issue 12 against a real `promptserve serve` (uvicorn): a flood of large images does not stall another client,
slow bodies are timed out, client disconnects are 499 in one log line, tokens never reach the access log."""

from __future__ import annotations

import io
import socket
import threading
import time
from functools import cache

import httpx
import pytest
import typer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import server.cli
from tests.integration.server_utils import ADMIN, AUTH, ServerProcess, image_bytes, prompt_set_bytes, wait_until

PNG = {"content-type": "image/png"}
FLOOD_IMAGES, FLOOD_SIDE = 32, 6000  # issue 12 point 1: 32 PNGs of 6000x6000 in 1.1 MB
ALLOWED_DELAY_S = 1.0  # generous: the issue measured 13.5 s before; a one-image classify takes ~20 ms


@cache
def large_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (FLOOD_SIDE, FLOOD_SIDE), (120, 30, 200)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def start_server(tmp_path_factory, name: str, *extra: str) -> ServerProcess:
    tmp = tmp_path_factory.mktemp(name)
    proc = ServerProcess(tmp, str(tmp / "registry"), "--max-wait-ms", "1", "--log-level", "info", *extra,
                         name=name).start().wait_ready()
    r = httpx.put(f"{proc.url}/tasks/small", content=prompt_set_bytes(1), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return proc


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    proc = start_server(tmp_path_factory, "hardening", "--body-timeout-s", "1.5")
    yield proc
    proc.stop()


def one_image_latency(url: str) -> float:
    start = time.perf_counter()
    r = httpx.post(f"{url}/classify/small", content=image_bytes(), headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    return time.perf_counter() - start


def delay_under_flood(url: str) -> tuple[float, float, httpx.Response]:
    """(one-image latency alone, the same while the flood request is in flight, the flood's answer)."""
    alone = sorted(one_image_latency(url) for _ in range(5))[2]
    files = [("files", (f"big{i}.png", large_png(), "image/png")) for i in range(FLOOD_IMAGES)]
    form = httpx.Request("POST", url, files=files)
    body, sending = form.read(), threading.Event()

    def flood_body():
        yield body[:64 << 10]
        sending.set()  # its first bytes are on the socket: the flood is in flight
        yield body[64 << 10:]

    answer: list[httpx.Response] = []
    flood = threading.Thread(target=lambda: answer.append(httpx.post(
        f"{url}/classify/small", content=flood_body(), timeout=120,
        headers={"content-type": form.headers["content-type"], "content-length": str(len(body))})))
    flood.start()
    assert sending.wait(30), "the flood request never started sending"
    during = one_image_latency(url)
    flood.join(timeout=150)
    assert answer, "the flood request never finished"
    print(f"\none-image classify: {1e3 * alone:.0f} ms alone, {1e3 * during:.0f} ms during the flood "
          f"({answer[0].status_code})")
    return alone, during, answer[0]


def test_a_flood_of_large_pngs_does_not_stall_another_client(live):
    alone, during, flood = delay_under_flood(live.url)
    # the default pixel limit follows the backbone's 32-pixel input: refused from the headers alone
    assert flood.status_code == 422 and flood.json()["error"] == "decompression_bomb", flood.text
    assert "pixels" in flood.json()["detail"]
    assert during - alone < ALLOWED_DELAY_S


def test_a_slow_body_is_timed_out(live):
    """10 of 1,000 declared bytes, then silence: 408 after the body timeout (1.5 s here), connection closed."""
    host, port = "127.0.0.1", live.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /classify/small HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"\x89PNG\r\n\x1a\n\0\0")
        start = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # returns b"" once the server closes the connection
            reply += chunk
        waited = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert waited < 8, waited


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_client_that_goes_away_is_499_in_one_log_line(live):
    before = metric(live.url, "promptserve_classify_requests_total", task="small", status="499")
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"POST /classify/small HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n--b\r\nContent-Disposition: form-data; "
                     b"name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG")
        # uvicorn answers 100 Continue when the app first asks for the body: the request is being read, then we go
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
    wait_until(lambda: metric(live.url, "promptserve_classify_requests_total", task="small", status="499") != before,
               10, what="the request to be counted")
    assert metric(live.url, "promptserve_classify_requests_total", task="small", status="499") == before + 1
    assert metric(live.url, "promptserve_classify_requests_total", task="small", status="500") == 0
    log = live.log()
    assert "(499)" in log and "Traceback" not in log


def test_a_token_in_the_query_string_never_reaches_the_access_log(live):
    secret = "s3cr3t-query-token-value"
    r = httpx.get(f"{live.url}/tasks", params={"token": secret, "top_k": 3}, timeout=10)
    assert r.status_code == 200  # no API token configured on this server: the parameter is ignored
    log = wait_until(lambda: "/tasks?token=***" in (text := live.log()) and text, 10, what="the access log line")
    assert secret not in log


def test_push_reads_the_admin_token_from_a_file(live, tmp_path):
    """The token never has to be on the command line (where the process list shows it)."""
    token_file, blob = tmp_path / "admin.token", tmp_path / "t.safetensors"
    token_file.write_text(ADMIN + "\n")
    blob.write_bytes(prompt_set_bytes(4))
    app = typer.Typer(add_completion=False)
    app.command("push")(server.cli.push)
    app.command("classify")(server.cli.classify)
    result = CliRunner(env={"PROMPTSERVE_ADMIN_TOKEN": None}).invoke(
        app, ["push", str(blob), "--task", "from-file", "--url", live.url, "--token-file", str(token_file)])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert httpx.get(f"{live.url}/tasks/from-file", timeout=10).status_code == 200
