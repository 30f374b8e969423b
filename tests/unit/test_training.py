"""Trainer unit tests on tiny random ViTs and synthetic ImageFolders: seconds each on a 2-core CPU."""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptserve.backbone import Backbone
from promptserve.model import PromptedViT
from promptserve.preprocess import normalise
from promptserve.promptset import PromptSet
from training.config import TrainConfig, TrainConfigError
from training.data import balanced_pick, load_task
from training.e2vpt import Importance, apply_pruning, n_pruned, prune
from training.imagefolder import DatasetError
from training.loop import PromptForward
from training.methods import build_prompt_params, expand_segments
from training.trainer import train_task

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
USER_CACHE = os.environ.get("PROMPTSERVE_CACHE")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Synthetic datasets are decoded into a per-test cache, not the user's ~/.cache/promptserve."""
    monkeypatch.setenv("PROMPTSERVE_CACHE", str(tmp_path / "cache"))


def tiny_backbone(num_classes: int = 3) -> Backbone:
    torch.manual_seed(0)
    return Backbone.from_timm("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                              num_classes=num_classes)


def make_folder(root: Path, classes=("a", "b", "c"), n_train=20, n_test=8, size=16) -> Path:
    """Class c's images are noisy flat colours: learnable in a few steps."""
    rng = np.random.default_rng(0)
    colours = {c: rng.integers(0, 255, 3) for c in classes}
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = np.clip(colours[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{j}.png")
    return root


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, train_size=0, val_size=12, visual_tokens=4, kv_tokens=4, progress=False,
                warmup_epochs=0.5, segments=4)
    return TrainConfig(**{**base, **kw})


QUIET = dict(log=lambda *a: None)


# ---- data -------------------------------------------------------------------------------------------------
def test_balanced_pick_is_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [50, 50, 50, 3])
    idx = balanced_pick(labels, 40, seed=1)
    counts = np.bincount(labels[idx], minlength=4)
    assert len(idx) == 40 and counts[3] == 3 and counts[:3].max() - counts[:3].min() <= 1
    assert np.array_equal(idx, balanced_pick(labels, 40, seed=1))
    assert not np.array_equal(idx, balanced_pick(labels, 40, seed=2))


def test_load_task_subset_and_val_split(tmp_path):
    root = make_folder(tmp_path / "ds")
    data = load_task(str(root), 16, "bicubic", train_size=30, val_size=9, seed=0, **QUIET)
    assert len(data.train) == 21 and len(data.val) == 9 and len(data.test) == 24
    assert np.bincount(data.val.labels).tolist() == [3, 3, 3]
    assert data.train.images.shape == (21, 16, 16, 3) and data.train.images.dtype == np.uint8


def test_bad_paths_and_empty_classes_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_task(str(tmp_path / "nope"), 16)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="train"):
        load_task(str(tmp_path / "flat"), 16)
    root = make_folder(tmp_path / "ds", n_train=2, n_test=1)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*no images"):
        load_task(str(root), 16, val_size=0)
    tar_path = tmp_path / "ds.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="ds")
    with pytest.raises(DatasetError, match="no images"):
        load_task(str(tar_path), 16, val_size=0)


def test_fashion_mnist_idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
    data = load_task(f"fmnist:{tmp_path}", 16, train_size=20, val_size=0)
    assert data.train.images.shape == (20, 16, 16, 3) and len(data.test) == 10 and len(data.classes) == 10
    # grey in, RGB out: all three channels equal
    assert np.array_equal(data.test.images[..., 0], data.test.images[..., 2])


def test_config_validation():
    with pytest.raises(TrainConfigError, match="method"):
        TrainConfig(method="lora")
    with pytest.raises(TrainConfigError, match="token_prune"):
        TrainConfig(token_prune=1.5)
    assert TrainConfig(method="full").lr < TrainConfig(method="linear").lr  # per-method defaults


# ---- masks, importance, pruning ---------------------------------------------------------------------------
def test_masks_and_importance_shapes():
    bb = tiny_backbone()
    params = build_prompt_params(bb, 3, cfg(method="e2vpt"), with_masks=True)
    scorer = Importance(params)
    fwd = PromptForward(bb, params)
    x = torch.randn(5, 3, 16, 16)
    loss = torch.nn.functional.cross_entropy(fwd(x), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    scorer()
    tok, seg = scorer.scores()
    assert sorted(tok) == [0, 1] and tok[0].shape == (4,) and seg[1].shape == (4, 4)
    assert all(bool((t > 0).all()) for t in tok.values())  # every mask is in the graph
    assert all(p.grad is None for p in bb.model.parameters())  # the backbone gets no gradient
    # masks are not parameters: the optimizer cannot move them
    assert not any(p is m for p in params.parameters() for pair in params.masks.values() for m in pair)


def test_segment_layouts():
    seg = torch.tensor([[1.0, 0.0]])
    assert expand_segments(seg, 4, "contiguous").tolist() == [[1, 1, 0, 0]]
    assert expand_segments(seg, 4, "interleaved").tolist() == [[1, 0, 1, 0]]


@pytest.mark.parametrize("token_prune,segment_prune", [(0.25, 0.5), (0.5, 0.25), (0.75, 0.0), (0.0, 0.5)])
def test_pruning_removes_exactly_the_asked_fraction(token_prune, segment_prune):
    gen = torch.Generator().manual_seed(0)
    tok = {i: torch.rand(8, generator=gen) for i in range(3)}
    seg = {i: torch.rand(8, 4, generator=gen) for i in range(3)}
    p = prune(tok, seg, token_prune, segment_prune)
    for i in range(3):
        kept = p.keep[i]
        assert len(kept) == 8 - round(token_prune * 8)
        dropped = sorted(set(range(8)) - set(kept.tolist()))
        assert tok[i][dropped].max() <= tok[i][kept].min() if dropped else True  # lowest scores go
        assert int((~p.seg_keep[i]).sum()) == n_pruned(segment_prune, len(kept) * 4)


def test_apply_pruning_removes_tokens_and_zeroes_segments():
    bb = tiny_backbone()
    params = build_prompt_params(bb, 3, cfg(method="e2vpt"), with_masks=True)
    tok = {i: torch.arange(4.0) for i in range(2)}
    seg = {i: torch.arange(16.0).view(4, 4) for i in range(2)}
    pruned = apply_pruning(params, prune(tok, seg, 0.5, 0.25))
    t = pruned.tensors()
    assert t["visual.0"].shape == (2, 32)  # tokens 2, 3 kept; 0, 1 gone from the sequence
    v = params.visual["0"].detach()
    # the 2 lowest of the kept tokens' 8 segments (8 dims each) are token 2's first two: zeroed
    assert torch.equal(t["visual.0"][1], v[3]) and torch.equal(t["visual.0"][0, 16:], v[2, 16:])
    assert int((t["visual.0"][0, :16] == 0).sum()) == 16


# ---- end to end on tiny backbones ---------------------------------------------------------------------------
def test_hard_pruned_artifact_serves_the_rewound_logits(tmp_path):
    """Invariant 5: the pruned prompt set served by PromptedViT == the rewound model, 1e-5."""
    bb = tiny_backbone()
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="e2vpt", token_prune=0.5, segment_prune=0.25), str(root), bb, **QUIET)
    rewound = out["result"].params
    ps = PromptSet.load(out["artifact"])
    assert ps.visual(0).shape[0] == 2 and ps.metrics["tokens_pruned_fraction"] == 0.5
    x = normalise(np.random.default_rng(1).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), bb.data_config)
    with torch.no_grad():
        expected = PromptForward(bb, rewound)(x)
    served = PromptedViT(bb)
    served.add_task("t", ps)
    got = served(x, ["t"] * 6)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["linear", "vpt-deep", "vpt-shallow"])
def test_prompt_methods_leave_the_backbone_bit_exact(tmp_path, method):
    bb = tiny_backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method=method), str(root), bb, **QUIET)
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ps = PromptSet.load(out["artifact"])
    assert ps.method == method and (ps.num_prompt_params() == 0) == (method == "linear")
    assert out["report"]["metrics"]["tuned_params"] == ps.num_params()


def test_repeated_seeded_run_gives_the_same_artifact(tmp_path):
    bb = tiny_backbone()
    root = make_folder(tmp_path / "ds")
    a = PromptSet.load(train_task(cfg(method="e2vpt", search=True), str(root), bb, **QUIET)["artifact"])
    b = PromptSet.load(train_task(cfg(method="e2vpt", search=True), str(root), bb, **QUIET)["artifact"])
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.config == b.config
    c = PromptSet.load(train_task(cfg(method="e2vpt", seed=1), str(root), bb, **QUIET)["artifact"])
    assert not torch.equal(a.tensors["head.weight"], c.tensors["head.weight"])


def test_loss_falls_on_a_real_subset(monkeypatch):
    tar = SHARED / "sign_digits.tar"
    if not tar.exists():
        pytest.skip(f"{SHARED} is absent (real datasets live in ../shared/datasets beside the repo)")
    if USER_CACHE is None:  # the real set is worth caching across runs: use the user's cache
        monkeypatch.delenv("PROMPTSERVE_CACHE")
    else:
        monkeypatch.setenv("PROMPTSERVE_CACHE", USER_CACHE)
    bb = tiny_backbone(10)
    # a random tiny ViT gives weak features, so the head (trained on cached features) carries the fall
    out = train_task(cfg(method="linear", epochs=15, train_size=200, val_size=0, optimizer="adamw", lr=1.0),
                     str(tar), bb, **QUIET)
    losses = [h["train_loss"] for h in out["report"]["history"]]
    assert losses[-1] < 0.9 * losses[0], losses


def test_hp_search_and_signed_importance(tmp_path):
    bb = tiny_backbone()
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="e2vpt", epochs=1, importance="signed", hp_search=True, lr_grid=[0.04, 0.16],
                         wd_grid=[0.0]), str(root), bb, **QUIET)
    rows = out["report"]["hp_search"]
    assert [r["lr"] for r in rows] == [0.04, 0.16]
    assert out["report"]["config"]["lr"] == max(rows, key=lambda r: r["val_acc"])["lr"]
    assert out["report"]["metrics"]["hp_search_best_val_acc"] == max(r["val_acc"] for r in rows)
    assert len(out["report"]["importance"]["token"]["0"]) == 4
