"""The checks every put runs before writing, and the small pieces both backends share."""

from __future__ import annotations

import hashlib
import json

import pytest

from prompt_store import (
    InvalidPromptSet,
    InvalidTaskName,
    LocalStore,
    TaskRecord,
    TooLarge,
    VersionNotFound,
    open_store,
)
from prompt_store.base import check_task_name, inspect_upload, match_version
from prompt_store.redis_store import RedisStore, _safe_url
from tests.store_utils import make_prompt_set


@pytest.mark.parametrize("name", ["a", "0", "cats", "cifar-100", "v1.2_beta", "a" * 64])
def test_good_task_names(name):
    assert check_task_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a" * 65, "../x", "x/y", "x\\y", ".x", "_x", "-x", "x\n", "x ", "\u00e9",
                                  None, 7])
def test_bad_task_names(name):
    with pytest.raises(InvalidTaskName, match="invalid task name"):
        check_task_name(name)


def test_an_upload_is_described_by_its_header():
    data = make_prompt_set(seed=3, classes=2, metadata={"method": "linear", "backbone_fingerprint": "f00d"})
    upload = inspect_upload("cats", bytearray(data), max_bytes=1 << 20)
    assert upload.data == data and upload.version == hashlib.sha256(data).hexdigest()
    assert upload.meta == {"size": len(data), "labels": ["class0", "class1"], "method": "linear",
                           "metrics": {"val_acc": 0.5, "test_acc": 0.25}, "backbone_fingerprint": "f00d"}


def test_missing_optional_metadata_gets_the_defaults_prompt_set_load_uses():
    data = make_prompt_set(classes=3, metadata={"labels": None, "method": None, "metrics": None,
                                                "backbone_fingerprint": None})
    meta = inspect_upload("cats", data, max_bytes=1 << 20).meta
    assert meta["labels"] == ["0", "1", "2"] and meta["method"] == "e2vpt"
    assert meta["metrics"] == {} and meta["backbone_fingerprint"] == ""


def test_size_is_checked_before_the_header_is_parsed():
    with pytest.raises(TooLarge, match="100 bytes"):
        inspect_upload("cats", b"\x00" * 101, max_bytes=100)


def test_a_header_problem_keeps_its_reason_and_says_why():
    data = make_prompt_set(metadata={"format": "promptserve/2"})
    with pytest.raises(InvalidPromptSet, match="promptserve/1") as refused:
        inspect_upload("cats", data, max_bytes=1 << 20)
    assert refused.value.reason == "format"


def test_text_instead_of_bytes_is_refused():
    with pytest.raises(InvalidPromptSet, match="str"):
        inspect_upload("cats", "not bytes", max_bytes=1 << 20)


def test_versions_are_named_in_full_or_by_a_unique_prefix():
    versions = ["abcdef01" + "0" * 56, "abcdef02" + "0" * 56, "12345678" + "0" * 56]
    assert match_version("t", versions[2], versions) == versions[2]
    assert match_version("t", "123456", versions) == versions[2]
    with pytest.raises(VersionNotFound, match="ambiguous"):
        match_version("t", "abcdef0", versions)
    with pytest.raises(VersionNotFound, match="no version"):
        match_version("t", "12345", versions)  # shorter than 6 digits
    with pytest.raises(VersionNotFound):
        match_version("t", "", versions)


def test_task_record_round_trips_through_json():
    record = TaskRecord(task="cats", version="ab" * 32, size=10, created="2025-01-01T00:00:00.000+00:00",
                        labels=["x"], method="e2vpt", metrics={"acc": 1.0}, backbone_fingerprint="fp")
    again = TaskRecord.from_dict({**json.loads(json.dumps(record.to_dict())), "change": "put"})
    assert again == record


def test_open_store_picks_the_backend_from_the_spec(tmp_path):
    with open_store(str(tmp_path / "reg")) as local:
        assert isinstance(local, LocalStore) and (tmp_path / "reg" / "blobs").is_dir()
    with open_store("redis://127.0.0.1:9/0", prefix="x:") as remote:  # connects lazily: no server needed
        assert isinstance(remote, RedisStore) and remote.prefix == "x:" and remote.channel == "x:events"
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://127.0.0.1:9/0", prefix="")


def test_passwords_stay_out_of_error_messages():
    assert _safe_url("redis://user:s3cret@db.example:6380/2") == "redis://user:***@db.example:6380/2"
    assert _safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
