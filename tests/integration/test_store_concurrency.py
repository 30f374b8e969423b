"""Many writers, killed writers and watchers in other processes, against both backends.

Child processes are forked (cheap: torch and the blobs are already in memory) and open their own store
from the same spec, as a trainer and a server would."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import threading
import time

import pytest

from prompt_store import open_store
from tests.store_utils import EventLog, consistency_problems, make_prompt_set

FORK = multiprocessing.get_context("fork")
WRITERS, PUTS_EACH = 8, 3


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _writer_blobs() -> list[list[bytes]]:
    return [[make_prompt_set(seed=100 * w + i) for i in range(PUTS_EACH)] for w in range(WRITERS)]


def _assert_every_put_landed(store, blobs: list[list[bytes]]) -> None:
    put = {sha(b): b for writer in blobs for b in writer}
    history = [h.version for h in store.history("shared")]
    assert sorted(history) == sorted(put), "every put is in the history, each once"
    assert store.resolve("shared").version in put
    for version, data in put.items():
        assert store.get("shared", version) == data
    assert consistency_problems(store) == []


def test_writer_threads_all_land(registry):
    blobs = _writer_blobs()
    start, errors = threading.Barrier(WRITERS), []

    def write(mine: list[bytes]) -> None:
        try:
            start.wait()
            for data in mine:
                registry.put("shared", data)
        except Exception as e:  # reported below: an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    _assert_every_put_landed(registry, blobs)


def _write_from_process(spec: str, kwargs: dict, mine: list[bytes], start) -> None:
    with open_store(spec, **kwargs) as store:
        start.wait(timeout=30)
        for data in mine:
            store.put("shared", data)


def test_writer_processes_all_land(registry_spec, registry):
    blobs = _writer_blobs()
    start = FORK.Barrier(WRITERS)
    procs = [FORK.Process(target=_write_from_process, args=(*registry_spec, b, start)) for b in blobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    _assert_every_put_landed(registry, blobs)


def _change_from_process(spec: str, kwargs: dict, data: bytes, rollback_to: str, conn) -> None:
    """put, rollback, delete; after each, send the moment it returned and wait for the go-ahead
    (LocalStore reports a burst of changes to one task as one event with its latest state)."""
    with open_store(spec, **kwargs) as store:
        for change in (lambda: store.put("cats", data), lambda: store.rollback("cats", rollback_to),
                       lambda: store.delete("cats")):
            change()
            conn.send(time.monotonic())
            if not conn.poll(30):
                return
            conn.recv()


def test_a_watcher_sees_another_process_s_changes_within_a_second(registry_spec, registry):
    old, new = make_prompt_set(seed=1), make_prompt_set(seed=2)
    registry.put("cats", old)
    events = EventLog()
    stop = registry.subscribe(events)
    here, there = FORK.Pipe()
    child = FORK.Process(target=_change_from_process, args=(*registry_spec, new, sha(old), there))
    try:
        child.start()
        for version, kind in ((sha(new), "put"), (sha(old), "rollback"), (None, "delete")):
            assert here.poll(30), f"the other process did not finish its {kind}"
            changed = here.recv()
            seen = events.wait_for("cats", version, kind, timeout_s=3)
            assert seen is not None, f"no {kind} event"
            assert seen - changed <= 1.0, f"{kind} seen {seen - changed:.2f} s after it happened"
            here.send("next")
    finally:
        child.join(timeout=30)
        stop()
    assert child.exitcode == 0


def _put_until_killed(spec: str, kwargs: dict, blobs: list[bytes], started) -> None:
    with open_store(spec, **kwargs) as store:
        for i in range(10_000):  # bounded: the test kills us long before
            store.put("victim", blobs[i % len(blobs)])
            if i == 0:
                started.set()


@pytest.mark.parametrize("round_", range(3))
def test_a_writer_killed_mid_put_leaves_a_consistent_store(registry_spec, registry, round_):
    blobs = [make_prompt_set(seed=1000 * round_ + i, visual_tokens=64, dim=64) for i in range(12)]
    registry.put("victim", blobs[0])
    started = FORK.Event()
    child = FORK.Process(target=_put_until_killed, args=(*registry_spec, blobs, started))
    child.start()
    try:
        assert started.wait(30), "the writer never got going"
        time.sleep(random.Random(round_).uniform(0.0, 0.05))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL, "the writer finished before it was killed: the test proved nothing"

    assert consistency_problems(registry) == []
    assert registry.resolve("victim").version in {sha(b) for b in blobs}
    survivor = make_prompt_set(seed=999_999)  # the lock (or Redis) is free again: the next writer goes ahead
    assert registry.put("victim", survivor).version == sha(survivor)
    assert registry.get("victim") == survivor
    assert consistency_problems(registry) == []
