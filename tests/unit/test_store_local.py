"""LocalStore's own guarantees: a crash at any step leaves the old or the new state, leftovers are
ignored then cleaned, a held lock gives up with a clear error, and delete sweeps unreferenced blobs."""

from __future__ import annotations

import hashlib
import os

import pytest
from filelock import FileLock

from prompt_store import LocalStore, StoreError, StoreUnavailable, TaskNotFound
from tests.store_utils import consistency_problems, make_prompt_set

CRASHED = 17


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crash_at_step(root, operation, step: int) -> int:
    """Run `operation(LocalStore(root))` in a forked child that dies (os._exit: no cleanup, like a
    SIGKILL) at its `step`-th filesystem step: half-way through writing a file, or just before an
    fsync, a rename or an unlink. Returns the child's exit code:
    CRASHED, or 0 when the operation has fewer steps and finished."""
    pid = os.fork()
    if pid == 0:  # child
        calls = 0

        def dying(real):
            def call(*args, **kwargs):
                nonlocal calls
                calls += 1
                if calls == step:
                    os._exit(CRASHED)
                return real(*args, **kwargs)

            return call

        def tearing(real_fdopen):  # a crash in the middle of writing a file's bytes
            def call(*args, **kwargs):
                f = real_fdopen(*args, **kwargs)
                real_write = f.write

                def write(data):
                    nonlocal calls
                    calls += 1
                    if calls == step:
                        real_write(data[: len(data) // 2])
                        f.flush()
                        os._exit(CRASHED)
                    return real_write(data)

                f.write = write
                return f

            return call

        try:
            os.fsync, os.replace, os.unlink = dying(os.fsync), dying(os.replace), dying(os.unlink)
            os.fdopen = tearing(os.fdopen)
            operation(LocalStore(root))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


OLD, NEW, OTHER = (make_prompt_set(seed=s, visual_tokens=4) for s in (1, 2, 3))


def _prepared(root) -> LocalStore:
    store = LocalStore(root)
    store.put("cats", OLD)
    store.put("cats", OTHER)  # current: OTHER; history: OLD, OTHER
    return store


OPERATIONS = {  # operation, the current versions a crash may leave (None: the task is gone)
    "put": (lambda s: s.put("cats", NEW), {sha(OTHER), sha(NEW)}),
    "rollback": (lambda s: s.rollback("cats", sha(OLD)), {sha(OTHER), sha(OLD)}),
    "delete": (lambda s: s.delete("cats"), {sha(OTHER), None}),
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_crash_at_any_step_leaves_the_old_or_the_new_state(tmp_path, name):
    operation, allowed = OPERATIONS[name]
    outcomes, leftovers = set(), 0
    for step in range(1, 30):
        root = tmp_path / f"step{step}"
        _prepared(root).close()
        code = _crash_at_step(root, operation, step)
        assert code in (CRASHED, 0)
        store = LocalStore(root)
        leftovers += any(store.tmp.iterdir())
        try:
            current = store.resolve("cats").version
            assert len(store.history("cats")) == 2 + (name == "put" and current == sha(NEW))
        except TaskNotFound:
            current = None
        assert current in allowed, f"crash before step {step} left {current}"
        assert consistency_problems(store) == [], f"crash before step {step}"
        outcomes.add(current)
        store.put("dogs", OLD)  # the next writer goes ahead and clears what the dead one left
        assert list(store.tmp.iterdir()) == []
        if code == 0:  # the operation finished: every step has had its crash
            break
    assert code == 0 and step > 3, "the operation should take several durable steps"
    assert outcomes == allowed, "both the old and the new state should occur"
    if name != "delete":
        assert leftovers, "some crash should have left a temp file behind"


def test_leftover_temp_files_are_ignored_then_removed(tmp_path):
    store = LocalStore(tmp_path)
    store.put("cats", OLD)
    (store.tmp / "cats.json.abc123").write_bytes(b'{"current": {"torn')
    (store.tmp / "deadbeef.safetensors.x").write_bytes(b"\x00" * 10)
    assert [r.task for r in store.list()] == ["cats"]
    assert store.get("cats") == OLD
    store.put("cats", NEW)
    assert list(store.tmp.iterdir()) == []


def test_a_held_lock_gives_up_with_a_clear_error(tmp_path):
    store = LocalStore(tmp_path, lock_timeout=0.2)
    store.put("cats", OLD)
    with FileLock(tmp_path / ".lock"), pytest.raises(StoreUnavailable, match="locked by another writer"):
        store.put("cats", NEW)
    assert store.get("cats") == OLD  # reads take no lock
    assert store.put("cats", NEW).version == sha(NEW)


def test_delete_also_sweeps_blobs_a_crashed_put_left_behind(tmp_path):
    store = LocalStore(tmp_path)
    store.put("cats", OLD)
    store.put("dogs", NEW)
    orphan = sha(OTHER)
    (store.blobs / f"{orphan}.safetensors").write_bytes(OTHER)  # written, but the task file never moved
    store.delete("dogs")
    assert sorted(p.name for p in store.blobs.iterdir()) == [f"{sha(OLD)}.json", f"{sha(OLD)}.safetensors"]
    assert store.get("cats") == OLD


def test_blobs_are_content_addressed_and_shared(tmp_path):
    store = LocalStore(tmp_path)
    store.put("cats", OLD)
    store.put("dogs", OLD)
    assert (store.blobs / f"{sha(OLD)}.safetensors").read_bytes() == OLD
    assert len(list(store.blobs.glob("*.safetensors"))) == 1


def test_a_task_file_not_written_by_the_store_is_reported(tmp_path):
    store = LocalStore(tmp_path)
    (store.tasks / "cats.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.resolve("cats")
