"""promptserve.Client / AsyncClient and `promptserve classify` against a real `promptserve serve` (uvicorn) on
random-tiny: 50 images in one call (more than the server's 32 per request), push / tasks / rollback / delete,
the server's error code carried by ClientError, and the CLI's table, --json and --csv."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys

import pytest

import promptserve as ps
from tests.integration.server_utils import ADMIN, REPO, ServerProcess, free_port, image_bytes, prompt_set_bytes

IMAGES = 50


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    proc = ServerProcess(tmp, str(tmp / "registry"), "--max-wait-ms", "2").start()
    try:
        proc.wait_ready()
        with ps.Client(proc.url, ADMIN) as client:
            client.push("pets", prompt_set_bytes(60, classes=4))
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(IMAGES):  # a nested folder and a non-image file: the directory walk takes images only
        (root / ("sub" if i % 5 == 0 else "") / f"img{i:02d}.png").parent.mkdir(exist_ok=True)
        (root / ("sub" if i % 5 == 0 else "") / f"img{i:02d}.png").write_bytes(image_bytes(i, size=(24, 20)))
    (root / "notes.txt").write_text("not an image")
    return root


def promptserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptserve_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_classify_more_images_than_one_request_holds(live):
    with ps.Client(live.url) as client:
        assert client.ready()["max_images_per_request"] == 32
        answers = client.classify("pets", [image_bytes(i, size=(24, 20)) for i in range(IMAGES)], top_k=2)
        single = client.classify("pets", [image_bytes(IMAGES - 1, size=(24, 20))], top_k=2)
    assert len(answers) == IMAGES and {a["task"] for a in answers} == {"pets"}
    assert all(len(a["predictions"]) == 2 and a["predictions"][0]["label"].startswith("s60-c") for a in answers)
    assert answers[-1]["predictions"][0]["label"] == single[0]["predictions"][0]["label"]  # order kept across chunks


def test_push_tasks_rollback_delete_and_errors_carry_the_server_code(live):
    with ps.Client(live.url, ADMIN) as client:
        first = client.push("cycle", prompt_set_bytes(61))
        second = client.push("cycle", prompt_set_bytes(62))
        listed = {t["task"]: t for t in client.tasks()}
        assert listed["cycle"]["version"] == second["version"]
        assert client.rollback("cycle", first["version"])["version"] == first["version"]
        assert client.delete("cycle") == {"task": "cycle", "deleted": True}
        with pytest.raises(ps.ClientError) as missing:
            client.classify("cycle", [image_bytes(0)])
    assert missing.value.status == 404 and missing.value.error and "cycle" in str(missing.value)
    with ps.Client(live.url, token="wrong") as client, pytest.raises(ps.ClientError) as refused:
        client.push("other", prompt_set_bytes(63))
    assert refused.value.status in (401, 403)


def test_async_client(live):
    async def run():
        async with ps.AsyncClient(live.url) as client:
            return await client.classify("pets", [image_bytes(i) for i in range(3)]), await client.tasks()

    answers, tasks = asyncio.run(run())
    assert len(answers) == 3 and "pets" in [t["task"] for t in tasks]


def test_an_unreachable_server_is_a_client_error(live):
    with ps.Client(f"http://127.0.0.1:{free_port()}", timeout=5) as client, pytest.raises(ps.ClientError) as e:
        client.tasks()
    assert e.value.status is None and "cannot reach" in str(e.value)


def test_cli_classifies_a_directory_of_50_images(live, image_dir):
    env = {"PROMPTSERVE_URL": live.url, "COLUMNS": "100"}
    as_csv = promptserve("classify", str(image_dir), "--task", "pets", "--csv", "--top-k", "1", env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == IMAGES and len({r["image"] for r in rows}) == IMAGES
    assert all(r["label"].startswith("s60-c") and r["rank"] == "1" for r in rows)
    as_json = json.loads(promptserve("classify", str(image_dir), "--task", "pets", "--json", env=env).stdout)
    assert len(as_json) == IMAGES and all(a["image"].endswith(".png") for a in as_json)
    table = promptserve("classify", str(image_dir), "--task", "pets", env=env)
    assert table.returncode == 0 and f"{IMAGES} images, task pets" in table.stdout
    assert sum(f"img{i:02d}.png" in table.stdout for i in range(IMAGES)) == IMAGES, table.stdout


def test_cli_errors_are_one_line(live, image_dir, tmp_path):
    env = {"PROMPTSERVE_URL": live.url}
    missing = promptserve("classify", str(tmp_path / "nope.png"), "--task", "pets", env=env)
    unknown = promptserve("classify", str(image_dir), "--task", "no-such-task", env=env)
    unreachable = promptserve("classify", str(image_dir), "--task", "pets",
                              env={"PROMPTSERVE_URL": "http://127.0.0.1:9"})
    for result, code, says in ((missing, 2, "does not exist"), (unknown, 1, "HTTP 404"),
                               (unreachable, 1, "cannot reach the server at http://127.0.0.1:9")):
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_request_with_too_many_files_is_the_documented_413(live):
    """Starlette's parser stops at max_files with its own 400; the server answers its documented 413."""
    import httpx

    files = [("files", (f"{i}.png", image_bytes(i, size=(8, 8)), "image/png")) for i in range(IMAGES)]
    r = httpx.post(f"{live.url}/classify/pets", files=files, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "too_many_images", r.text
    assert "the limit is 32" in r.json()["detail"]


def test_server_and_uvicorn_lines_share_one_format(tmp_path):
    import re

    import httpx

    proc = ServerProcess(tmp_path, str(tmp_path / "registry"), "--log-level", "info", name="logs").start()
    try:
        proc.wait_ready()
        httpx.get(f"{proc.url}/healthz", timeout=10).raise_for_status()
    finally:
        proc.stop()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    line_format = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ([\w.]+): ")
    loggers = {m.group(2) for line in lines if (m := line_format.match(line))}
    assert {"promptserve.server", "uvicorn.error", "uvicorn.access"} <= loggers, lines
    assert all(line_format.match(line) for line in lines if "GET /healthz" in line or "Uvicorn running" in line)


def test_push_rollback_and_delete_through_the_cli(live, tmp_path):
    """Issue 24 item 6: the CLI reaches a running server for every admin action, like `push` (admin token from
    the environment), each failure one line."""
    env = {"PROMPTSERVE_URL": live.url, "PROMPTSERVE_ADMIN_TOKEN": ADMIN}
    versions = []
    for seed in (70, 71):
        blob = tmp_path / f"{seed}.safetensors"
        blob.write_bytes(prompt_set_bytes(seed))
        pushed = promptserve("push", str(blob), "--task", "cli-admin", env=env)
        assert pushed.returncode == 0, pushed.stderr
        versions.append(pushed.stdout.split(" -> ")[1].split()[0])
    back = promptserve("rollback", "cli-admin", versions[0][:8], env=env)
    assert back.returncode == 0 and back.stdout.strip() == f"cli-admin -> {versions[0]} (rolled back)", back.stderr
    with ps.Client(live.url) as client:
        assert client.classify("cli-admin", [image_bytes(1)])[0]["version"] == versions[0]
    unknown = promptserve("rollback", "cli-admin", "abcdef12", env=env)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: ") and "no version" in unknown.stderr
    no_token = promptserve("delete", "cli-admin", env={"PROMPTSERVE_URL": live.url, "PROMPTSERVE_ADMIN_TOKEN": ""})
    assert no_token.returncode == 2 and "admin token is needed" in no_token.stderr
    gone = promptserve("delete", "cli-admin", env=env)
    assert gone.returncode == 0 and gone.stdout.strip() == "cli-admin deleted", gone.stderr
    again = promptserve("delete", "cli-admin", env=env)
    assert again.returncode == 1 and "no task" in again.stderr
