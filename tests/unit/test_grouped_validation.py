"""--val-group: a validation split that holds out whole groups (frames of one video track, photos of one person),
so validation scores images unlike any training image, as the test set does. GTSRB is the case that needed it:
its file names carry the track (`<track>_<frame>.png`) and a split by image put twins on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import TrainConfig, TrainConfigError
from training.data import group_ids, load_task, validation_split
from training.imagefolder import DatasetError


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTSERVE_CACHE", str(tmp_path / "cache"))


def tracks_folder(root: Path, tracks_per_class=(6, 6, 2), frames=4) -> Path:
    """GTSRB-like: class c has tracks `<track>_<frame>.png`; track numbers repeat across classes (as GTSRB's
    do), so a track is only unique with its class."""
    rng = np.random.default_rng(0)
    for c, n_tracks in zip("abc", tracks_per_class, strict=True):
        for split in ("train", "test"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for t in range(n_tracks if split == "train" else 1):
                for f in range(frames):
                    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{t:05d}_{f:05d}.png")
    return root


TRACK = r"^([^/]+/\d+)_"


def track_of(name: str) -> str:
    return name.rsplit("_", 1)[0]


def test_no_track_straddles_train_and_val_and_every_class_is_scored(tmp_path):
    root = tracks_folder(tmp_path / "ds")
    logs = []
    data = load_task(str(root), 8, val_fraction=0.25, val_max=200, seed=0, val_group=TRACK, log=logs.append)
    train_tracks = {track_of(n) for n in data.train.names}
    val_tracks = {track_of(n) for n in data.val.names}
    assert val_tracks and not train_tracks & val_tracks
    assert len(data.train) + len(data.val) == 56
    # a: 24 images, share 6 = one track of 4 (a second would make 8 > 6); c: 8 images, share 2, but a class
    # with no validation image yet may take one track over its share, keeping the other for training
    assert np.bincount(data.val.labels).tolist() == [4, 4, 4]
    assert any("14 groups in 56" in m for m in logs), logs
    # seeded: the same split again, another with another seed
    again = load_task(str(root), 8, val_fraction=0.25, val_max=200, seed=0, val_group=TRACK, log=lambda m: None)
    other = load_task(str(root), 8, val_fraction=0.25, val_max=200, seed=3, val_group=TRACK, log=lambda m: None)
    assert again.val.names == data.val.names and other.val.names != data.val.names


def test_the_split_by_image_it_replaces_does_put_twins_on_both_sides(tmp_path):
    """The failure --val-group exists for: without it, tracks straddle the split (so the test above can fail)."""
    data = load_task(str(tracks_folder(tmp_path / "ds")), 8, val_fraction=0.25, seed=0, log=lambda m: None)
    assert {track_of(n) for n in data.train.names} & {track_of(n) for n in data.val.names}


def test_a_class_held_in_one_group_keeps_it_for_training_and_is_named_in_a_warning(tmp_path):
    root = tracks_folder(tmp_path / "ds", tracks_per_class=(6, 6, 1))
    logs = []
    data = load_task(str(root), 8, val_fraction=0.25, seed=0, val_group=TRACK, log=logs.append)
    assert np.bincount(data.val.labels, minlength=3)[2] == 0 and np.bincount(data.train.labels)[2] == 4
    assert any("1 class(es) have no validation image" in m for m in logs), logs


def test_groups_come_from_the_first_capture_group_or_the_whole_match_and_unmatched_names_stand_alone():
    names = ["a/00001_0.png", "a/00001_1.png", "b/00001_0.png", "b/other.png", "b/more.png"]
    by_track = group_ids(names, TRACK)
    assert by_track[0] == by_track[1] and len(set(by_track.tolist())) == 4  # b/00001 differs from a/00001
    across_classes = group_ids(names, r"\d+_")  # no capture group: the match, which ignores the class
    assert across_classes[0] == across_classes[2] and across_classes[3] != across_classes[4]


def test_groups_that_break_the_budget_or_a_classs_last_image_are_skipped_not_forced_in():
    labels = np.repeat([0, 1], 10)
    groups = np.array([0] * 9 + [1] + [2] * 3 + [3] * 2 + [4] * 5)  # 20 images: at most 4 held out, 2 per class
    for seed in range(5):
        v = validation_split(labels, ["x", "y"], 0.2, 200, seed=seed, groups=groups)
        chosen = set(groups[v].tolist())
        assert len(v) <= 4 and 1 in chosen and len(chosen & {2, 3}) == 1 and not chosen & {0, 4}, (seed, chosen)


def test_a_bad_pattern_or_a_source_without_file_names_is_one_clear_line(tmp_path):
    with pytest.raises(TrainConfigError, match="not a regular expression"):
        TrainConfig(val_group="([")
    import gzip
    import struct
    for prefix, n in (("train", 30), ("t10k", 10)):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 28 * 28))
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 3).astype(np.uint8).tobytes())
    with pytest.raises(DatasetError, match="--val-group needs image file names"):
        load_task(f"fmnist:{tmp_path}", 8, val_fraction=0.2, val_group=TRACK, log=lambda m: None)


def test_train_takes_val_group_from_its_config_and_saves_it_beside_the_artifact(tmp_path):
    from promptserve.testing import tiny_backbone
    from training.trainer import train_task

    root = tracks_folder(tmp_path / "ds")
    logs = []
    config = TrainConfig(method="linear", epochs=1, batch_size=16, train_size=None, val_fraction=0.25,
                         val_group=TRACK, progress=False, hp_search=False, seeds=2)
    out = train_task(config, str(root), tiny_backbone(img_size=8, patch_size=4, depth=1, embed_dim=16,
                                                      num_classes=3), log=logs.append)
    assert out["report"]["config"]["val_group"] == TRACK
    assert out["report"]["data"]["val"] == 12 and any("14 groups in 56" in m for m in logs)


def test_a_class_with_no_validation_image_yet_may_not_spend_the_others_budget_on_one_big_group():
    labels = np.repeat(np.arange(10), 20)
    groups = np.arange(200) // 10  # every class: two groups of 10
    v = validation_split(labels, [str(c) for c in range(10)], 0.2, 40, seed=0, groups=groups)
    assert len(v) == 0  # an even share of 40 is 4: no group of 10 may jump its class's cap of 4
    groups = np.concatenate([np.arange(100) // 10, 10 + np.arange(100) // 2])  # classes 5-9: groups of 2
    v = validation_split(labels, [str(c) for c in range(10)], 0.2, 40, seed=0, groups=groups)
    assert sorted(set(labels[v].tolist())) == [5, 6, 7, 8, 9] and len(v) == 20  # each its cap of 4


def test_a_split_with_no_room_for_any_group_or_a_pattern_that_matches_nothing_is_one_clear_line(tmp_path):
    root = tracks_folder(tmp_path / "ds", tracks_per_class=(2, 2, 2), frames=4)
    with pytest.raises(DatasetError, match="no group fits the validation split"):  # one group per class folder
        load_task(str(root), 8, val_fraction=0.25, seed=0, val_group=r"^[^/]+", log=lambda m: None)
    with pytest.raises(DatasetError, match=r"matches none of the 24 .*'<class>/<file name>', e.g. 'a/00000_00000"):
        load_task(str(root), 8, val_fraction=0.25, seed=0, val_group=r"^(\d+)_", log=lambda m: None)
    logs = []
    load_task(str(root), 8, val_fraction=0.25, seed=0, val_group=r"^a/(\d+)_", log=logs.append)
    assert any("matches 8 of 24 names" in m for m in logs), logs
    logs.clear()
    load_task(str(root), 8, val_fraction=0, seed=0, val_group=TRACK, log=logs.append)
    assert any("--val-group is ignored" in m for m in logs), logs


def test_an_optional_capture_group_that_did_not_take_part_falls_back_to_the_name():
    ids = group_ids(["a/1_x.png", "a/1_y.png", "b/z.png"], r"^(?:(\w/\d+)_)?")
    assert ids[0] == ids[1] != ids[2]


def test_a_split_by_image_of_names_that_look_like_frames_of_tracks_suggests_val_group(tmp_path):
    logs = []
    load_task(str(tracks_folder(tmp_path / "tracks")), 8, val_fraction=0.25, seed=0, log=logs.append)
    [hint] = [m for m in logs if "share a file-name prefix" in m]
    assert "56 of the 56 training images" in hint and "--val-group '^(.+)_[^_/]*$'" in hint
    flat = tmp_path / "flat"  # `banded_0001.jpg`: the prefix is the class, no finer: no hint
    for c in "abc":
        (flat / "train" / c).mkdir(parents=True)
        for j in range(8):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "train" / c / f"{c}_{j:04d}.png")
    logs.clear()
    load_task(str(flat), 8, val_fraction=0.25, seed=0, log=logs.append)
    assert not any("prefix" in m for m in logs), logs
    logs.clear()  # the hint's own pattern, followed, draws the same tracks as the sweep's
    data = load_task(str(tmp_path / "tracks"), 8, val_fraction=0.25, seed=0, val_group="^(.+)_[^_/]*$",
                     log=logs.append)
    same = load_task(str(tmp_path / "tracks"), 8, val_fraction=0.25, seed=0, val_group=TRACK, log=lambda m: None)
    assert data.val.names == same.val.names and not any("prefix" in m for m in logs)
