"""The registry's behaviour, run against LocalStore and RedisStore alike (fixtures in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import pickle
from datetime import datetime

import pytest
import torch
from safetensors.torch import save

from prompt_store import (
    InvalidPromptSet,
    InvalidTaskName,
    LocalStore,
    TaskNotFound,
    TooLarge,
    VersionNotFound,
    open_store,
)
from tests.store_utils import EventLog, consistency_problems, make_prompt_set


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(store) -> dict:
    """Everything the store holds, byte for byte (LocalStore's lock file aside)."""
    if isinstance(store, LocalStore):
        return {str(p.relative_to(store.root)): p.read_bytes()
                for p in sorted(store.root.rglob("*")) if p.is_file() and p.name != ".lock"}
    return {key: store._redis.dump(key) for key in sorted(store._redis.scan_iter(match=store.prefix + "*"))}


def stored_versions(store) -> set[str]:
    """Versions whose bytes are still kept, whatever task names them."""
    if isinstance(store, LocalStore):
        return {p.name.split(".")[0] for p in store.blobs.glob("*.safetensors")}
    return {k.decode().rsplit(":", 1)[1] for k in store._redis.scan_iter(match=store.prefix + "blob:*")}


def test_put_then_resolve_reports_the_header(registry):
    data = make_prompt_set(seed=1, classes=4, metadata={"method": "vpt-deep", "backbone_fingerprint": "abc123"})
    record = registry.put("cats", data)
    assert record == registry.resolve("cats")
    assert record.task == "cats" and record.version == sha(data) and record.size == len(data)
    assert record.labels == ["class0", "class1", "class2", "class3"]
    assert record.method == "vpt-deep" and record.backbone_fingerprint == "abc123"
    assert record.metrics == {"val_acc": 0.5, "test_acc": 0.25}
    assert datetime.fromisoformat(record.created).tzinfo is not None
    assert json.loads(json.dumps(record.to_dict()))["version"] == record.version


def test_get_is_bit_exact_for_the_current_and_older_versions(registry):
    old, new = make_prompt_set(seed=1), make_prompt_set(seed=2, visual_tokens=5)
    registry.put("cats", old)
    registry.put("cats", new)
    assert registry.get("cats") == new
    assert registry.get("cats", sha(old)) == old
    assert registry.get("cats", sha(old)[:10]) == old  # a unique prefix names a version too
    with pytest.raises(VersionNotFound):
        registry.get("cats", "0" * 64)
    with pytest.raises(TaskNotFound):
        registry.get("dogs")


def test_history_is_oldest_first_and_a_reput_only_moves_the_pointer(registry):
    blobs = [make_prompt_set(seed=s) for s in range(3)]
    records = [registry.put("cats", b) for b in blobs]
    again = registry.put("cats", blobs[0])
    assert [h.version for h in registry.history("cats")] == [sha(b) for b in blobs]
    assert registry.resolve("cats").version == sha(blobs[0])
    assert again.created == records[0].created  # created is when the version was first put
    assert registry.history("cats")[1] == records[1]


def test_rollback_is_a_pointer_move(registry):
    first, second = make_prompt_set(seed=1), make_prompt_set(seed=2)
    r1 = registry.put("cats", first)
    registry.put("cats", second)
    before = registry.history("cats")
    assert registry.rollback("cats", sha(first)[:8]) == r1
    assert registry.resolve("cats") == r1
    assert registry.get("cats") == first
    assert registry.history("cats") == before
    with pytest.raises(VersionNotFound):
        registry.rollback("cats", sha(make_prompt_set(seed=3)))
    with pytest.raises(VersionNotFound):
        registry.rollback("cats", sha(first)[:3])  # too short to name a version
    with pytest.raises(TaskNotFound):
        registry.rollback("dogs", sha(first))


def test_list_gives_every_task_s_current_record_sorted(registry):
    assert registry.list() == []
    for task, seed in (("zebra", 1), ("ants", 2), ("moths", 3)):
        registry.put(task, make_prompt_set(seed=seed))
    registry.put("ants", make_prompt_set(seed=4))
    listed = registry.list()
    assert [r.task for r in listed] == ["ants", "moths", "zebra"]
    assert listed == [registry.resolve(t) for t in ("ants", "moths", "zebra")]


def test_list_sees_every_change_since_the_last_list(registry_spec, registry):
    a, b = make_prompt_set(seed=1), make_prompt_set(seed=2)
    registry.put("ants", a)
    registry.put("bees", a)
    assert [r.version for r in registry.list()] == [sha(a), sha(a)]
    registry.put("ants", b)
    registry.delete("bees")
    registry.put("cats", a)
    assert [(r.task, r.version) for r in registry.list()] == [("ants", sha(b)), ("cats", sha(a))]
    spec, kwargs = registry_spec
    with open_store(spec, **kwargs) as other:  # a change made through another store object
        other.rollback("ants", sha(a))
    assert [(r.task, r.version) for r in registry.list()] == [("ants", sha(a)), ("cats", sha(a))]


def test_delete_frees_only_versions_no_other_task_uses(registry):
    only_cats, shared = make_prompt_set(seed=1), make_prompt_set(seed=2)
    registry.put("cats", only_cats)
    registry.put("cats", shared)
    registry.put("dogs", shared)
    registry.delete("cats")
    for read in (registry.resolve, registry.get, registry.history, registry.delete):
        with pytest.raises(TaskNotFound):
            read("cats")
    assert registry.get("dogs") == shared
    assert stored_versions(registry) == {sha(shared)}
    assert [r.task for r in registry.list()] == ["dogs"]
    registry.put("cats", only_cats)  # a deleted name can be used again, with a fresh history
    assert [h.version for h in registry.history("cats")] == [sha(only_cats)]
    assert consistency_problems(registry) == []


def _headless() -> bytes:
    return save({"visual.0": torch.zeros(2, 8)}, metadata={"format": "promptserve/1"})


MALFORMED = {
    "empty": (lambda: b"", "format"),
    "not safetensors": (lambda: b"this is not a prompt set at all", "format"),
    "pickle": (lambda: pickle.dumps({"head.weight": [1.0]}), "format"),
    "truncated body": (lambda: make_prompt_set(seed=1)[:-7], "format"),
    "no format tag": (lambda: make_prompt_set(metadata={"format": None}), "format"),
    "other format": (lambda: make_prompt_set(metadata={"format": "promptserve/99"}), "format"),
    "unknown tensor": (lambda: make_prompt_set(tensors={"evil": torch.zeros(2)}), "format"),
    "integer dtype": (lambda: make_prompt_set(tensors={"visual.0": torch.zeros(2, 8, dtype=torch.int64)}), "dtype"),
    "no head": (_headless, "missing_tensor"),
    "labels miscounted": (lambda: make_prompt_set(classes=3, metadata={"labels": '["a"]'}), "labels"),
    "labels not json": (lambda: make_prompt_set(metadata={"labels": "[oops"}), "labels"),
    "metrics not an object": (lambda: make_prompt_set(metadata={"metrics": "[1, 2]"}), "format"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_are_refused_with_nothing_written(registry, case):
    registry.put("cats", make_prompt_set(seed=0))
    before = snapshot(registry)
    build, reason = MALFORMED[case]
    with pytest.raises(InvalidPromptSet) as refused:
        registry.put("cats", build())
    assert refused.value.reason == reason
    assert snapshot(registry) == before


BAD_NAMES = ["", "Cats", "../etc", "a/b", "-x", ".hidden", "a" * 65, "two words", "caf\u00e9", "x\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_task_names_are_refused_everywhere(registry, name):
    before = snapshot(registry)
    with pytest.raises(InvalidTaskName):
        registry.put(name, make_prompt_set())
    for call in (registry.get, registry.resolve, registry.history, registry.delete):
        with pytest.raises(InvalidTaskName):
            call(name)
    assert snapshot(registry) == before


def test_the_longest_and_odd_but_valid_names_work(registry):
    for name in ("a" * 64, "0", "v1.2_beta-3"):
        registry.put(name, make_prompt_set())
        assert registry.resolve(name).task == name


def test_oversize_is_refused_with_nothing_written(registry_spec):
    spec, kwargs = registry_spec
    small, big = make_prompt_set(classes=2, dim=4), make_prompt_set(classes=50, dim=64)
    with open_store(spec, max_bytes=len(small), **kwargs) as store:
        store.put("cats", small)  # exactly at the limit is allowed
        before = snapshot(store)
        with pytest.raises(TooLarge, match="limit"):
            store.put("cats", big)
        assert snapshot(store) == before
        assert store.get("cats") == small


def test_subscribers_hear_put_rollback_and_delete(registry):
    events = EventLog()
    stop = registry.subscribe(events)
    first, second = make_prompt_set(seed=1), make_prompt_set(seed=2)
    try:
        registry.put("cats", first)
        assert events.wait_for("cats", sha(first), "put") is not None
        registry.put("cats", second)
        assert events.wait_for("cats", sha(second), "put") is not None
        registry.rollback("cats", sha(first))
        assert events.wait_for("cats", sha(first), "rollback") is not None
        registry.delete("cats")
        assert events.wait_for("cats", None, "delete") is not None
    finally:
        stop()
    registry.put("dogs", first)  # after stop() nothing more arrives
    assert events.wait_for("dogs", sha(first), "put", timeout_s=0.5) is None


def test_a_failing_callback_does_not_end_the_watch(registry):
    calls = EventLog()

    def flaky(event):
        calls(event)
        raise RuntimeError("subscriber bug")

    stop = registry.subscribe(flaky)
    try:
        a, b = make_prompt_set(seed=1), make_prompt_set(seed=2)
        registry.put("cats", a)
        assert calls.wait_for("cats", sha(a), "put") is not None
        registry.put("dogs", b)
        assert calls.wait_for("dogs", sha(b), "put") is not None
    finally:
        stop()
