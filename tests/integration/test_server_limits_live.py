"""Issue 23 items 3-4 over real sockets against `promptserve serve`: header bytes (431), headers that never finish
and idle connections (closed), and the request bodies all requests may hold together (503 + Retry-After), while
a probe classify keeps being answered."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from tests.integration.server_utils import (
    AUTH,
    ServerProcess,
    image_bytes,
    phone_photo,
    prompt_set_bytes,
    wait_until,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    proc = ServerProcess(tmp, str(tmp / "registry"), "--max-header-kib", "16", "--header-timeout-s", "1.5",
                         "--max-body-mib-in-flight", "2", "--max-wait-ms", "1", name="limits").start().wait_ready()
    assert httpx.put(f"{proc.url}/tasks/t", content=prompt_set_bytes(1), headers=AUTH, timeout=30).status_code == 200
    yield proc
    proc.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_all(sock: socket.socket, limit_s: float = 10.0) -> bytes:
    sock.settimeout(limit_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def probe(server) -> float:
    start = time.monotonic()
    r = httpx.post(f"{server.url}/classify/t", content=image_bytes(), headers={"content-type": "image/png"},
                   timeout=30)
    assert r.status_code == 200
    return time.monotonic() - start


def test_huge_headers_get_431_without_holding_the_others(server):
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sent, refused_at = 0, None
    start = time.monotonic()
    try:
        while sent < 64 << 20:  # a 64 MB header, unless the server cuts it off first (it must)
            sock.sendall(b"X-Pad: " + b"a" * 8185 + b"\r\n")
            sent += 8192
    except (BrokenPipeError, ConnectionResetError):
        refused_at = time.monotonic() - start
    answer = read_all(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431") or refused_at is not None
    assert sent < 8 << 20, f"{sent} header bytes were accepted"  # cut off near the 16 KiB limit, not at 64 MB
    assert probe(server) < 2.0


def test_headers_that_never_finish_and_idle_connections_are_closed(server):
    slow, idle = connect(server), connect(server)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    start = time.monotonic()
    for _ in range(10):  # a byte every 0.3 s: slowloris
        try:
            slow.sendall(b"a")
        except OSError:
            break
        time.sleep(0.3)
    answer = read_all(slow, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer, answer[:200]
    assert time.monotonic() - start < 6
    assert read_all(idle, 5) == b""  # closed without a word, soon after the header timeout
    slow.close()
    idle.close()


def test_bodies_in_flight_are_capped_with_503_and_retry_after(server):
    def one_mib() -> httpx.Response:
        return httpx.post(f"{server.url}/classify/t", content=b"\0" * (1 << 20), headers={"content-type": "image/png"},
                          timeout=30)

    first = connect(server)  # declares 1.5 MiB and sends it slowly: it holds its share of the cap
    first.sendall(b"POST /classify/t HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 1572864\r\nExpect: 100-continue\r\n\r\n" + b"\0" * 1024)
    # uvicorn answers 100 Continue when the app first reads the body, after its declared bytes were counted
    assert first.recv(64).startswith(b"HTTP/1.1 100 Continue")
    r = one_mib()
    assert r.status_code == 503 and r.json()["error"] == "busy" and r.headers["retry-after"] == "1", r.text
    assert probe(server) < 2.0  # small requests still pass: the cap counts bytes, and one image is small
    first.close()
    # the first request's share is given back when the server sees it end
    wait_until(lambda: one_mib().status_code != 503, 10, what="the closed request's share to be given back")


def test_a_probe_stays_fast_while_large_headers_arrive(server):
    stop, latencies = threading.Event(), []

    def attack():
        while not stop.is_set():
            sock = connect(server)
            with contextlib.suppress(OSError):  # the server cuts the connection off at its header limit
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * (4 << 20) + b"\r\n")
            sock.close()

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        latencies.append(probe(server))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    latencies.sort()
    assert latencies[int(0.99 * (len(latencies) - 1))] < 0.5, latencies[-5:]


ABUSE = """
import contextlib, json, socket, sys, threading, time
import httpx
port, photo_path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
url, photo, stop, outcomes = f"http://127.0.0.1:{port}", open(photo_path, "rb").read(), threading.Event(), []
big = b"\\0" * (300 << 20)

def huge_headers():
    while not stop.is_set():
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Pad: " + b"a" * (64 << 20) + b"\\r\\n")
        sock.close()

def huge_bodies():
    def body():
        yield (b'--B\\r\\nContent-Disposition: form-data; name="files"; filename="a.png"\\r\\n'
               b"Content-Type: image/png\\r\\n\\r\\n")
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]
        yield b"\\r\\n--B--\\r\\n"
    while not stop.is_set():
        r = httpx.post(f"{url}/classify/t", content=body(), timeout=60,
                       headers={"content-type": "multipart/form-data; boundary=B"})
        outcomes.append(r.status_code)

def photos():
    while not stop.is_set():
        outcomes.append(httpx.post(f"{url}/classify/t", content=photo, headers={"content-type": "image/jpeg"},
                                   timeout=60).status_code)

threads = [threading.Thread(target=f, daemon=True) for f in (huge_headers, huge_bodies, photos)]
for t in threads:
    t.start()
print("started", flush=True)
time.sleep(seconds)
stop.set()
for t in threads:
    t.join(60)
print(json.dumps(outcomes))
"""


def test_a_probe_keeps_p99_under_250_ms_while_abuse_arrives(tmp_path):
    """The red team's bar: a classify every 200 ms keeps p99 < 250 ms while 64 MB headers, 300 MB bodies and
    12 MP photos arrive (default limits; the abuse comes from another process, for about 8 s)."""
    import json
    import select
    import subprocess
    import sys

    proc = ServerProcess(tmp_path, str(tmp_path / "registry"), "--max-wait-ms", "1", name="abuse").start()
    proc.wait_ready()
    try:
        assert httpx.put(f"{proc.url}/tasks/t", content=prompt_set_bytes(1), headers=AUTH,
                         timeout=30).status_code == 200
        (tmp_path / "photo.jpg").write_bytes(phone_photo())
        abuse = subprocess.Popen([sys.executable, "-c", ABUSE, str(proc.port), str(tmp_path / "photo.jpg"), "8"],
                                 stdout=subprocess.PIPE, text=True)
        started, _, _ = select.select([abuse.stdout], [], [], 60)  # its first line, once its threads run
        assert started and abuse.stdout.readline() == "started\n", "the abuse never started"
        latencies = []
        while abuse.poll() is None and len(latencies) < 60:
            latencies.append(probe(proc))
            time.sleep(0.2)
        outcomes = json.loads(abuse.communicate(timeout=120)[0])
        latencies.sort()
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        assert p99 < 0.25, f"probe p99 {p99 * 1e3:.0f} ms over {len(latencies)} probes: {latencies[-5:]}"
        assert 200 in outcomes and 413 in outcomes and 500 not in outcomes  # photos served, 300 MB refused
    finally:
        proc.stop()
