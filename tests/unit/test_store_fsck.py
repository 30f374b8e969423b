"""A broken task record is that task's problem only, and `promptserve tasks fsck` finds and repairs it
(issue 12 point 3); a full disk stores nothing and leaves no orphans (point 4)."""

from __future__ import annotations

import errno
import json
import os

import pytest
from typer.testing import CliRunner

from prompt_store import BrokenRecord, LocalStore, StoreFull
from prompt_store.cli import app
from tests.store_utils import make_prompt_set

GOOD, OTHER = make_prompt_set(seed=1), make_prompt_set(seed=2)


@pytest.fixture
def damaged(tmp_path) -> LocalStore:
    """Two good tasks; then a non-JSON task file, a pointer to a vanished blob, an orphan blob and a temp file."""
    store = LocalStore(tmp_path / "registry")
    store.put("good", GOOD)
    store.put("lost", OTHER)
    (store.tasks / "junk.json").write_bytes(b"\x00\xff not json")
    os.unlink(store.blobs / f"{store.resolve('lost').version}.safetensors")
    (store.blobs / f"{'0' * 64}.safetensors").write_bytes(b"orphan")
    (store.tmp / "x.partial").write_bytes(b"half")
    return store


def test_a_broken_record_does_not_break_the_listing(damaged):
    records, broken = damaged.scan()
    assert [r.task for r in records] == ["good", "lost"] and broken == {"junk": "unreadable"}
    assert [r.task for r in damaged.list()] == ["good", "lost"]
    with pytest.raises(BrokenRecord) as e:
        damaged.resolve("junk")
    assert str(damaged.root) not in str(e.value)  # a relative name only
    damaged.delete("good")  # writes still work; the sweep leaves blobs alone while a record is unreadable
    assert (damaged.blobs / f"{'0' * 64}.safetensors").exists()


def run_fsck(store: LocalStore, *args: str, code: int) -> dict:
    result = CliRunner().invoke(app, ["fsck", "--store", str(store.root), "--json", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def test_fsck_reports_then_repairs(damaged):
    report = run_fsck(damaged, code=1)
    assert report["broken_tasks"] == {"junk": "unreadable", "lost": "missing_blob"}
    # orphans are only known once every record is readable (junk.json might name any blob)
    assert report["orphan_blobs"] == [] and report["temp_files"] == ["x.partial"] and not report["clean"]
    assert (damaged.tasks / "junk.json").exists()  # a report changes nothing

    run_fsck(damaged, "--repair", code=0)
    assert sorted(p.name for p in (damaged.root / "quarantine").iterdir()) == ["junk.json", "lost.json"]
    assert not (damaged.blobs / f"{'0' * 64}.safetensors").exists() and os.listdir(damaged.tmp) == []
    after = run_fsck(damaged, code=0)
    assert after["clean"] and [r.task for r in damaged.list()] == ["good"]
    assert damaged.get("good") == GOOD


def test_a_full_disk_stores_nothing_and_leaves_no_orphans(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "registry")
    store.put("t", GOOD)
    before = sorted(os.listdir(store.blobs)), store.resolve("t")
    real_fsync, calls = os.fsync, [0]

    def fsync_until_full(fd):
        calls[0] += 1
        if calls[0] >= 3:  # the new blob is in place when its sidecar meets the full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    with pytest.raises(StoreFull, match="disk is full"):
        store.put("t", OTHER)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (sorted(os.listdir(store.blobs)), store.resolve("t")) == before and os.listdir(store.tmp) == []
