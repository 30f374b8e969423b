"""Helpers for the registry's tests and benchmarks (test code, not shipped in the wheel): a throwaway
redis-server on a free loopback port, and small valid prompt-set files.

    with LocalRedisServer(tmp_dir) as server:
        store = RedisStore(server.url)
        store.put("cats", make_prompt_set(seed=1))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis
import torch
from safetensors.torch import save

from prompt_store.base import ChangeEvent, TaskNotFound
from promptserve.fileformat import FORMAT

INSTALL_HINT = "redis-server is not installed: apt-get install redis-server"


def find_redis_server() -> str | None:
    """$REDIS_SERVER if set (an empty or wrong one means none), else redis-server on PATH or in /usr/bin."""
    override = os.environ.get("REDIS_SERVER")
    if override is not None:
        return override if override and os.access(override, os.X_OK) else None
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedisServer:
    """Starts redis-server in `directory`; `persistent=True` turns on an fsync-always append-only file so a
    killed server comes back with every acknowledged write. The port is kept across stop() and start()."""

    def __init__(self, directory: str | os.PathLike, persistent: bool = False, executable: str | None = None):
        self.directory = Path(directory)
        self.persistent = persistent
        self.executable = executable or find_redis_server()
        if self.executable is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the free port before redis binds it
            port = self.port or free_port()
            self.process = subprocess.Popen(self._command(port), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            if self._wait_ready(port, timeout_s):
                self.port = port
                return self
            self.stop(kill=True)
            if self.port:  # a fixed port that will not come up again is not going to work either
                break
        raise RuntimeError(f"redis-server did not start on 127.0.0.1 (see {self.directory / 'redis.log'})")

    def _command(self, port: int) -> list[str]:
        cmd = [self.executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory),
               "--save", "", "--daemonize", "no", "--loglevel", "warning", "--protected-mode", "no",
               "--logfile", str(self.directory / "redis.log")]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def _wait_ready(self, port: int, timeout_s: float) -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError):  # also "loading the dataset"
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL (a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def make_prompt_set(seed: int = 0, classes: int = 3, dim: int = 8, visual_tokens: int = 0,
                    metadata: dict[str, str | None] | None = None, tensors: dict | None = None) -> bytes:
    """A valid prompt set's bytes: head.weight (classes, dim), head.bias, and visual.0 (visual_tokens, dim)
    if asked. `metadata` adds or (with None) removes header keys; `tensors` adds or replaces tensors.
    Different seeds give different versions. The bytes are not reproducible (safetensors writes the
    metadata in hash order), so keep the bytes you put rather than building them twice."""
    g = torch.Generator().manual_seed(seed)
    content = {"head.weight": torch.randn(classes, dim, generator=g), "head.bias": torch.randn(classes, generator=g)}
    if visual_tokens:
        content["visual.0"] = torch.randn(visual_tokens, dim, generator=g)
    content.update(tensors or {})
    meta = {"format": FORMAT, "backbone": "vit_test", "backbone_fingerprint": f"fp-{dim}",
            "labels": json.dumps([f"class{i}" for i in range(classes)]), "method": "e2vpt",
            "config": json.dumps({"seed": seed}), "metrics": json.dumps({"val_acc": 0.5, "test_acc": 0.25}),
            "created": "2025-01-01T00:00:00+00:00"}
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return save(content, metadata=meta)


def consistency_problems(store) -> list[str]:
    """What is wrong with a store, as sentences (empty when consistent): every task's pointer names a
    version in its history, each version once, and every version's bytes are there and hash to its name.
    Meant for a store nobody is changing while it runs."""
    problems = []
    for record in store.list():
        try:
            history, current = store.history(record.task), store.resolve(record.task)
        except TaskNotFound:
            problems.append(f"{record.task}: listed but not found")
            continue
        versions = [h.version for h in history]
        if current.version not in versions:
            problems.append(f"{record.task}: pointer {current.version[:12]} is not in its history")
        if len(set(versions)) != len(versions):
            problems.append(f"{record.task}: a version appears twice in its history")
        for h in history:
            try:
                data = store.get(record.task, h.version)
            except TaskNotFound:
                problems.append(f"{record.task}: version {h.version[:12]} has no bytes")
                continue
            if hashlib.sha256(data).hexdigest() != h.version or len(data) != h.size:
                problems.append(f"{record.task}: version {h.version[:12]} does not read back intact")
    return problems


class EventLog:
    """A subscribe() callback that keeps (arrival time, event) pairs and lets a test wait for one."""

    def __init__(self):
        self.events: list[tuple[float, ChangeEvent]] = []
        self._changed = threading.Condition()

    def __call__(self, event: ChangeEvent) -> None:
        with self._changed:
            self.events.append((time.monotonic(), event))
            self._changed.notify_all()

    def wait_for(self, task: str, version: str | None, kind: str, timeout_s: float = 5.0) -> float | None:
        """Arrival time (time.monotonic) of the first matching event, or None after timeout_s."""
        wanted = ChangeEvent(task=task, version=version, kind=kind)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for arrived, event in self.events:
                    if event == wanted:
                        return arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
