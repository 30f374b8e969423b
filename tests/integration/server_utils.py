"""Helpers for the server tests: the random-tiny backbone, small prompt sets and images, and a real
`promptserve serve` process on a free loopback port (bounded start-up, log kept for failures)."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from functools import cache
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from promptserve.backbone import Backbone, random_tiny_backbone
from promptserve.testing import random_prompt_set
from tests.store_utils import free_port

ADMIN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
REPO = Path(__file__).resolve().parents[2]


@cache
def random_tiny() -> Backbone:
    """The backbone `--backbone random-tiny` builds (weights, fingerprint and spec), built once and shared
    read-only across tests."""
    return random_tiny_backbone()


def prompt_set_bytes(seed: int, classes: int = 3, visual: int = 2, kv: int = 2, backbone: Backbone | None = None,
                     **overrides) -> bytes:
    """A valid prompt set for random-tiny, its prompts and head drawn from `seed` (and its labels named after
    it), so each seed answers differently."""
    ps = random_prompt_set(backbone or random_tiny(), visual, kv, classes=[f"s{seed}-c{i}" for i in range(classes)],
                           seed=seed, metrics={"seed": seed})
    for key, value in overrides.items():
        setattr(ps, key, value)
    return ps.to_bytes()


def image_bytes(seed: int = 0, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def phone_photo(seed: int = 0, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12 MP JPEG with structure at every scale (a smooth field plus edges), like a photo, not noise."""
    rng = np.random.default_rng(seed)
    small = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data: a decompression-bomb shape
    that Pillow's header parse sees before any decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not met within {timeout_s} s")


class ServerProcess:
    """`python -m server.cli serve ...` as a child process on 127.0.0.1:<free port>."""

    def __init__(self, tmp: Path, store: str, *extra: str, name: str = "server", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        self.args = [sys.executable, "-m", "server.cli", "serve", "--backbone", "random-tiny", "--store", store,
                     "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *extra]
        self.env = {**os.environ, "PROMPTSERVE_ADMIN_TOKEN": ADMIN, "OMP_NUM_THREADS": "1",
                    "PROMPTSERVE_TORCH_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.cwd = REPO

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
