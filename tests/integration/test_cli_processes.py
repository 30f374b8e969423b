"""The command line as a user runs it, each command a process of its own: a user's mistake is one `error:` line
with exit code 2 (typer's usage box at most), a bug is one line too unless --debug asks for the traceback, a timm
name without weights is refused before anything loads, and a busy port is one line before the backbone loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def promptserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptserve_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("args", "code", "says"), [
    (["serve", "--max-batch", "0"], 2, "error: --max-batch: Input should be greater than or equal to 1"),
    (["serve", "--log-level", "loud"], 2, "error: --log-level 'loud'"),
    (["train", "--data", "/no/such/folder", "--backbone", "random-tiny", "--out", "/tmp/x.safetensors"], 2,
     "does not exist"),
    (["push", "/no/such/file.safetensors", "--task", "t"], 2, "does not exist"),
    (["info", "--task", "README.md"], 2, "error: cannot read README.md as a safetensors artifact"),
    (["serve", "--ray", "--grpc-port", "9001"], 2, "error: --grpc-port is not served with --ray yet"),
    (["distill", "--data", "x", "--teacher", "/no/such.tflite", "--out", "/tmp/s.safetensors", "--amp", "fast"],
     2, "error: --amp 'fast': use one of auto, bf16, off"),
    (["probe", "--backbone", "random-tiny", "--data", "/no/such/folder"], 2, "does not exist"),
    (["classify", "README.md", "--task", "t", "--top-k", "0"], 2, "--top-k': Input should be greater than or equal"),
])
def test_user_mistakes_are_one_line(args, code, says):
    result = promptserve(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 5  # typer's own usage box for a bad path; ours is 1


def test_a_bad_flag_is_typers_usage_error():
    result = promptserve("serve", "--no-such-flag")
    assert result.returncode == 2 and "No such option: --no-such-flag" in result.stderr


CRASHING_INFO = ("import sys, promptserve.cli, promptserve_cli\n"
                 "def boom(*args, **kwargs):\n    raise RuntimeError('boom')\n"
                 "promptserve.cli.backbone_from_flags = boom\n"  # a bug inside a command, not a user mistake
                 "promptserve_cli.main(sys.argv[1:])")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback():
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CRASHING_INFO, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})

    quiet = run("info", "--backbone", "random-tiny")
    assert quiet.returncode == 1 and quiet.stderr == "error: boom (RuntimeError; --debug shows the traceback)\n"
    for loud in (run("--debug", "info", "--backbone", "random-tiny"),
                 run("info", "--backbone", "random-tiny", PROMPTSERVE_DEBUG="1")):
        assert loud.returncode == 1 and "Traceback" in loud.stderr and "RuntimeError: boom" in loud.stderr


def test_cli_refuses_a_timm_name_without_weights_in_one_line(tmp_path):
    """The issue's done-when check, for train, eval's --backbone, info and serve (which must not bind)."""
    for args in (["train", "--data", str(tmp_path), "--out", str(tmp_path / "x.safetensors")],
                 ["info"], ["serve", "--port", "0"]):
        result = promptserve(*args, "--backbone", "vit_tiny_patch16_224")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--pretrained" in lines[0] and "--weights" in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x.safetensors").exists()


def test_a_busy_port_is_one_line_before_anything_loads():
    """Issue 24 item 11: a failed start logged the bind error, then the backbone's loading lines."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = promptserve("serve", "--backbone", "random-tiny", "--port", str(port), "--store", "/tmp/unused")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Loading" not in result.stderr + result.stdout and "ready:" not in result.stderr  # one line, no more
    assert len(result.stderr.strip().splitlines()) == 1
