"""promptserve.files: a write is all or nothing, and a failed one leaves neither a temp file nor a half file."""

from __future__ import annotations

import numpy as np
import pytest

from promptserve.files import atomic_target, write_atomic


def test_write_atomic_replaces_the_target_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new", durable=True)
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.bin"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_the_temp_name_keeps_the_suffix_writers_choose_formats_by(tmp_path):
    target = tmp_path / "cache.npz"
    with atomic_target(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))  # np.savez appends .npz to a name without it: the rename would miss it
    with np.load(target) as z:
        assert z["x"].tolist() == [0, 1, 2]


def test_a_temp_dir_keeps_temp_files_out_of_the_target_folder(tmp_path):
    (tmp_path / "tmp").mkdir()
    with atomic_target(tmp_path / "blobs" / "v.safetensors", durable=True, tmp_dir=tmp_path / "tmp") as tmp:
        assert tmp.parent == tmp_path / "tmp"
        tmp.write_bytes(b"x")
    assert (tmp_path / "blobs" / "v.safetensors").read_bytes() == b"x" and not any((tmp_path / "tmp").iterdir())
