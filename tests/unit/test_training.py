"""The trainer's parts on tiny random ViTs and synthetic ImageFolders, without a training run: data, splits and
caches, config, masks, importance and pruning, E2VPT's rules, the optimizer's weight-decay rule. Whole runs
(`train_task`) are tests/e2e/test_training_runs.py, which shares these helpers."""

from __future__ import annotations

import gzip
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptserve.preprocess import normalise
from promptserve.testing import random_images, tiny_backbone
from training.config import TrainConfig, TrainConfigError
from training.data import augment, balanced_pick, load_task, validation_split
from training.e2vpt import Importance, apply_pruning, n_pruned, one_pass_importance, prune
from training.imagefolder import DatasetError
from training.loop import PromptForward
from training.methods import build_prompt_params, expand_segments
from training.trainer import train_task


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    """Synthetic datasets are decoded into a per-test cache, not the user's ~/.cache/promptserve."""
    monkeypatch.setenv("PROMPTSERVE_CACHE", str(tmp_path / "cache"))


# 16 px, 2 blocks of 32 dims: a training run takes about a second on a CPU
SMALL = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_classes=3)


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
    base = dict(epochs=2, batch_size=16, train_size=None, val_fraction=0.2, val_max=12, visual_tokens=4, kv_tokens=4,
                progress=False, warmup_epochs=0.5, segments=4, hp_search=False)
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
    data = load_task(str(root), 16, "bicubic", train_size=30, val_fraction=0.3, val_max=200, seed=0, **QUIET)
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
        load_task(str(root), 16, val_fraction=0)
    tar_path = tmp_path / "ds.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="ds")
    with pytest.raises(DatasetError, match="no images"):
        load_task(str(tar_path), 16, val_fraction=0)


def test_fashion_mnist_idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
    data = load_task(f"fmnist:{tmp_path}", 16, train_size=20, val_fraction=0)
    assert data.train.images.shape == (20, 16, 16, 3) and len(data.test) == 10 and len(data.classes) == 10
    # grey in, RGB out: all three channels equal
    assert np.array_equal(data.test.images[..., 0], data.test.images[..., 2])


def test_config_validation():
    with pytest.raises(TrainConfigError, match="method"):
        TrainConfig(method="lora")
    with pytest.raises(TrainConfigError, match="token_prune"):
        TrainConfig(token_prune=1.5)
    assert TrainConfig(method="full").lr < TrainConfig(method="linear").lr  # per-method defaults


def test_augment_without_the_flip_is_the_same_crop_never_mirrored():
    x = torch.randn(64, 3, 8, 8)  # (B, 3, S, S), asymmetric content: a flip changes it
    cropped = augment(x, torch.Generator().manual_seed(3), flip=False)
    either = augment(x, torch.Generator().manual_seed(3))  # the same crops (drawn first), then half flipped
    mirrored = ~torch.isclose(cropped, either).flatten(1).all(1)
    assert torch.equal(either[mirrored], cropped[mirrored].flip(3))
    assert torch.equal(either[~mirrored], cropped[~mirrored])
    assert 0 < int(mirrored.sum()) < 64
    assert not torch.equal(cropped, x)  # the crop still moves images (some shift by up to 4 px)
    with pytest.raises(TrainConfigError, match="add --augment"):
        TrainConfig(flip=False)
    assert TrainConfig(augment=True, flip=False).flip is False


# ---- masks, importance, pruning ---------------------------------------------------------------------------
def test_masks_and_importance_shapes():
    bb = tiny_backbone(**SMALL)
    params = build_prompt_params(bb, 3, cfg(method="e2vpt"), with_masks=True)
    scorer = Importance(params)
    fwd = PromptForward(bb, params)
    x = random_images(5, size=16)
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
    emptied_total = 0
    for i in range(3):
        p_i = prune({i: tok[i]}, {i: seg[i]}, token_prune, segment_prune)  # per layer: its emptied count
        kept, k = p_i.keep[i], 8 - round(token_prune * 8)
        assert len(kept) + p_i.emptied == k  # tokens left with no segment are pruned as tokens
        by_score = torch.sort(tok[i], descending=True, stable=True).indices[:k]
        assert set(kept.tolist()) <= set(by_score.tolist())  # lowest token scores go first
        assert int((~p_i.seg_keep[i]).sum()) + 4 * p_i.emptied == n_pruned(segment_prune, k * 4)
        assert bool(p_i.seg_keep[i].any(dim=1).all())
        emptied_total += p_i.emptied
    assert p.emptied == emptied_total


def test_apply_pruning_removes_tokens_and_zeroes_segments():
    bb = tiny_backbone(**SMALL)
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


# ---- the protocol: validation split, cache, hp search, seeds ---------------------------------------------------
def test_validation_split_is_a_fraction_capped_balanced_and_seeded(tmp_path):
    root = make_folder(tmp_path / "ds", n_train=80, n_test=1)  # 240 training images
    logs = []
    data = load_task(str(root), 16, train_size=None, val_fraction=0.2, val_max=200, seed=0, log=logs.append)
    assert len(data.val) == 48 and len(data.train) == 192  # 20%, not an absolute 200
    assert np.bincount(data.val.labels).tolist() == [16, 16, 16]
    capped = load_task(str(root), 16, val_fraction=0.5, val_max=30, seed=0, **QUIET)
    assert len(capped.val) == 30
    again = load_task(str(root), 16, val_fraction=0.2, val_max=200, seed=0, **QUIET)
    assert np.array_equal(again.val.images, data.val.images)
    assert not any("fewer than" in m for m in logs)


def test_small_classes_warn_and_a_class_of_one_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "ds", n_train=6, n_test=1)
    logs = []
    data = load_task(str(root), 16, val_fraction=0.2, seed=0, log=logs.append)
    assert np.bincount(data.val.labels).tolist() == [1, 1, 1]  # at least one per class
    assert any("fewer than 10 training images" in m and "a (5)" in m for m in logs), logs
    for f in sorted((root / "train" / "b").glob("*.png"))[1:]:
        f.unlink()
    with pytest.raises(DatasetError, match=r"b \(1\).*at least 2"):
        load_task(str(root), 16, val_fraction=0.2, **QUIET)
    assert len(load_task(str(root), 16, val_fraction=0, **QUIET).train) == 13  # no split asked: it trains


def test_an_unbalanced_class_keeps_most_of_its_images_for_training(tmp_path):
    labels = np.repeat(np.arange(2), [100, 5])
    v = validation_split(labels, ["big", "small"], 0.2, 200, seed=0)
    counts = np.bincount(labels[v], minlength=2)
    assert counts[1] == 1 and counts[0] == 20  # the small class gives its share, not an equal count


def test_decode_cache_sees_an_added_image_and_no_cache_skips_it(tmp_path):
    root = make_folder(tmp_path / "ds", n_train=4, n_test=1)
    first = load_task(str(root), 16, val_fraction=0, **QUIET)
    cached = list((tmp_path / "cache" / "datasets").glob("*.npz"))
    assert cached  # written
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "a" / "new.png")
    second = load_task(str(root), 16, val_fraction=0, **QUIET)
    assert len(second.train) == len(first.train) + 1
    n_entries = len(list((tmp_path / "cache" / "datasets").glob("*.npz")))
    (root / "train" / "a" / "new.png").unlink()
    third = load_task(str(root), 16, val_fraction=0, use_cache=False, **QUIET)
    assert len(third.train) == len(first.train)
    assert len(list((tmp_path / "cache" / "datasets").glob("*.npz"))) == n_entries  # --no-cache wrote nothing


def test_config_uses_none_for_defaults_and_hp_search_defaults_on_for_prompts():
    c = TrainConfig(method="vpt-deep")
    assert c.lr == 0.16 and c.weight_decay == 0.01 and c.hp_search is True
    assert c.lr_grid == [0.04, 0.16, 0.64] and c.wd_grid == [0.01, 0.1] and c.hp_epochs == c.epochs // 2
    assert TrainConfig(method="linear").hp_search is False and TrainConfig(method="full").hp_search is False
    with pytest.raises(TrainConfigError, match="weight_decay"):
        TrainConfig(weight_decay=-1.0)
    with pytest.raises(TrainConfigError, match="segment_rule"):
        TrainConfig(segment_rule="random")


def test_no_validation_split_with_tuning_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "ds", n_train=4, n_test=1)
    with pytest.raises(TrainConfigError, match="--no-hp-search"):
        train_task(cfg(method="vpt-deep", hp_search=True, val_fraction=0), str(root), tiny_backbone(**SMALL), **QUIET)


# ---- E2VPT faithfulness ---------------------------------------------------------------------------------------
def test_prompt_dropout_acts_only_while_training():
    bb = tiny_backbone(**SMALL)
    params = build_prompt_params(bb, 3, cfg(method="vpt-deep", prompt_dropout=0.5))
    fwd = PromptForward(bb, params)
    x = random_images(2, size=16)
    assert not params.training  # evaluation and the stored tensors never see dropout
    with torch.no_grad():
        served = fwd(x)
        fwd.train(True)
        dropped = fwd(x)
        fwd.train(False)
        assert not torch.equal(served, dropped) and torch.equal(served, fwd(x))


def test_signed_importance_is_the_official_rule():
    """E[dL/drho] (signed, not negated) from one pass after stage 1, and the LOWEST are pruned."""
    bb = tiny_backbone(**SMALL)
    params = build_prompt_params(bb, 3, cfg(method="e2vpt"), with_masks=True)
    images = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    fwd = PromptForward(bb, params)
    scorer = one_pass_importance(fwd, params, images, labels, batch_size=4, progress=False)
    assert scorer.batches == 3 and all(p.grad is None for p in params.parameters())  # no step, grads dropped
    x = normalise(images, bb.data_config)
    grads = []
    for start in range(0, 10, 4):
        loss = torch.nn.functional.cross_entropy(fwd(x[start:start + 4]), torch.as_tensor(labels[start:start + 4]))
        grads.append(torch.autograd.grad(loss, params.masks[0][0])[0])
    tok, _ = scorer.scores()
    torch.testing.assert_close(tok[0], torch.stack(grads).mean(0))
    p = prune(tok, scorer.scores()[1], 0.5, 0.0)
    assert set(p.keep[0].tolist()) == set(torch.sort(tok[0], descending=True).indices[:2].tolist())


def test_segment_pruning_never_keeps_an_all_zero_token():
    tok = {0: torch.tensor([4.0, 3.0, 2.0, 1.0])}
    seg = {0: torch.tensor([[9.0, 9, 9, 9], [8, 8, 8, 8], [7, 7, 7, 7], [0, 0, 0, 0]])}
    p = prune(tok, seg, 0.0, 0.25)  # global: the 4 lowest segments are all of token 3's
    assert p.keep[0].tolist() == [0, 1, 2] and p.emptied == 1 and bool(p.seg_keep[0].all(dim=1).all())
    assert p.summary({0: 4})["tokens_emptied_by_segments"] == 1
    per_token = prune(tok, seg, 0.0, 1.0, rule="per-token", min_segments_kept=2)
    assert per_token.keep[0].tolist() == [0, 1, 2, 3] and per_token.seg_keep[0].sum(dim=1).tolist() == [2, 2, 2, 2]
    assert per_token.emptied == 0


# ---- the optimizer ------------------------------------------------------------------------------------------
def test_backbone_runs_exempt_the_position_embedding_from_weight_decay_and_prompt_training_does_not():
    """One rule (training.loop.make_optimizer) with one parameter: pretraining and distillation also exempt
    pos_embed, as they always have; their checkpoints' optimizer state fits only these groups, in this order."""
    import timm

    from training import backbone_training
    from training.loop import make_optimizer
    from training.pretrain import PretrainConfig

    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=32,
                              num_heads=2)
    names = {id(p): n for n, p in model.named_parameters()}
    recipe = PretrainConfig(data="-", out="-")
    opt = backbone_training.optimizer(model, recipe)
    decayed, rest = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [recipe.weight_decay, 0.0]
    in_order = [n for n, p in model.named_parameters()]
    assert decayed == [n for n in in_order if n in decayed] and rest == [n for n in in_order if n in rest]
    assert "pos_embed" in rest and "cls_token" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert all(model.get_parameter(n).ndim <= 1 for n in rest if n != "pos_embed")
    prompt_rule = make_optimizer(list(model.parameters()), "sgd", 0.1, 1e-4)
    assert "pos_embed" in [names[id(p)] for p in prompt_rule.param_groups[0]["params"]]


# ---- growing a backbone (distill --depth) -------------------------------------------------------------------
def test_grown_blocks_compute_what_the_shallower_backbone_computes_and_then_learn():
    """distill --depth: the deeper student starts exactly where --init is (new blocks are identities), every
    old block keeps its weights in order, and the new blocks' zeroed projections still receive gradients."""
    import timm

    from training.distill import DistillConfig, grow_blocks

    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=2, num_classes=3)
    torch.manual_seed(0)
    shallow = timm.create_model("vit_tiny_patch16_224", depth=2, **kwargs).eval()
    deep = timm.create_model("vit_tiny_patch16_224", depth=5, **kwargs).eval()
    state = grow_blocks(shallow.state_dict(), 2, 5)
    deep.load_state_dict(state)  # strict: every key of a depth-5 ViT, nothing else
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(deep(x), shallow(x), atol=1e-6)
    # 2 -> 5 spreads copies evenly: 0 0' 0' 1 1'; the originals keep their weights and order
    assert torch.equal(state["blocks.0.attn.qkv.weight"], shallow.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(state["blocks.3.mlp.fc2.weight"], shallow.state_dict()["blocks.1.mlp.fc2.weight"])
    assert torch.equal(state["blocks.4.attn.qkv.weight"], shallow.state_dict()["blocks.1.attn.qkv.weight"])
    assert not state["blocks.4.mlp.fc2.weight"].any() and not state["blocks.1.attn.proj.weight"].any()
    deep.train()
    deep(x).sum().backward()
    assert deep.blocks[4].mlp.fc2.weight.grad.abs().sum() > 0  # identities that can learn
    with pytest.raises(ValueError, match="below the --init backbone's depth 5"):
        grow_blocks(deep.state_dict(), 5, 2)
    with pytest.raises(ValueError, match="--depth grows an --init backbone"):
        DistillConfig(data="-", out="-", teacher="-", depth=9)


def test_distill_loss_leaves_unlabeled_views_out_of_the_cross_entropy():
    from training.distill import distill_loss

    torch.manual_seed(0)
    logits, proj, emb = torch.randn(6, 3, requires_grad=True), torch.randn(6, 5), torch.randn(6, 5)
    label_a = torch.tensor([0, 1, 2, -1, -1, -1])
    weight = torch.tensor([1.0, 0.3, 1.0, 1.0, 0.5, 1.0])
    label_b = torch.tensor([0, 2, 2, -1, -1, -1])
    loss, (right, counted), parts = distill_loss((logits, proj), (emb, label_a, label_b, weight), ce_weight=1.0)
    _, (right_3, counted_3), labelled_parts = distill_loss(
        (logits[:3], proj), (emb, label_a[:3], label_b[:3], weight[:3]), ce_weight=0.0)
    assert parts["ce"] == pytest.approx(labelled_parts["ce"])  # the -1 rows add nothing to the label term
    assert (right, counted) == (right_3, counted_3) and counted == 3  # nor to the accuracy
    loss.backward()
    assert (logits.grad[3:] == 0).all() and (logits.grad[:3] != 0).any()
    _, none, only_mse = distill_loss((logits[3:], proj[3:]), (emb[3:], label_a[3:], label_b[3:], weight[3:]), 1.0)
    assert none == (0, 0) and only_mse["ce"] == 0.0


def test_an_mlp_projector_maps_the_pooled_feature_and_an_older_checkpoint_resumes_as_linear():
    """distill --projector: mlp puts a hidden layer between the pooled feature and the teacher's embedding; the
    projector never enters the backbone; a checkpoint saved before the flag existed resumes as linear (its
    recipe), and another projector on --resume is another recipe."""
    from dataclasses import asdict

    import timm

    from training.backbone_training import check_same_recipe
    from training.distill import DistillConfig, Student

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=1,
                            num_classes=3)
    linear, mlp = Student(vit, 20), Student(vit, 20, "mlp")
    x = torch.randn(2, 3, 16, 16)
    (logits_l, proj_l), (logits_m, proj_m) = linear(x), mlp(x)
    assert proj_l.shape == proj_m.shape == (2, 20) and torch.equal(logits_l, logits_m)
    assert [m.out_features for m in mlp.project if isinstance(m, torch.nn.Linear)] == [20, 20]
    assert not any(k.startswith("project") for k in vit.state_dict())  # exported with the ViT: never the head
    with pytest.raises(ValueError, match="--projector 'deep': use one of linear, mlp"):
        DistillConfig(data="-", out="-", teacher="-", projector="deep")
    cfg = DistillConfig(data="-", out="-", teacher="-")
    old = {k: v for k, v in asdict(cfg).items() if k != "projector"}  # a checkpoint from before the flag
    defaults = {"projector": "linear"}
    check_same_recipe(old, asdict(cfg), DistillConfig.FREE_ON_RESUME, defaults=defaults)
    with pytest.raises(ValueError, match="projector='linear' vs 'mlp'"):
        check_same_recipe(old, {**asdict(cfg), "projector": "mlp"}, DistillConfig.FREE_ON_RESUME, defaults=defaults)


def test_a_continued_stage_starts_from_the_checkpoints_projector(tmp_path):
    """distill --init-projector: the new stage's projector is the checkpoint's, not a new one; a projector of
    another kind or a file that is not a distill checkpoint is refused with what to pass instead."""
    import timm

    from training.distill import DistillConfig, Student, load_projector

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=1,
                            num_classes=3)
    trained = Student(vit, 20, "mlp")
    checkpoint = tmp_path / "s.ckpt.pt"
    torch.save({"student": trained.state_dict(), "config": {"projector": "mlp"}}, checkpoint)
    fresh = Student(vit, 20, "mlp")
    assert not torch.equal(fresh.project[0].weight, trained.project[0].weight)  # a new projector differs
    load_projector(fresh, checkpoint)
    for a, b in zip(fresh.project.state_dict().values(), trained.project.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds a mlp projector .* pass --projector mlp"):
        load_projector(Student(vit, 20, "linear"), checkpoint)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a distill checkpoint"):
        load_projector(fresh, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="give --init the backbone that stage exported"):
        DistillConfig(data="-", out="-", teacher="-", init_projector=str(checkpoint))
    with pytest.raises(ValueError, match="--init-projector .*nope.pt: no such file"):
        DistillConfig(data="-", out="-", teacher="-", init="b.safetensors", init_projector=str(tmp_path / "nope.pt"))


def test_dead_leaves_are_seeded_images_and_load_as_unlabeled(tmp_path):
    from training.imagefolder import DatasetError, load_unlabeled
    from training.synthetic import dead_leaves, main

    a, b, c = dead_leaves(4, seed=1), dead_leaves(4, seed=1), dead_leaves(4, seed=2)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    assert dead_leaves(2, seed=1, size=16).shape == (2, 16, 16, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({tuple(img.reshape(-1, 3).mean(0).round()) for img in a}) == 4  # four different pictures
    assert all(len(np.unique(img.reshape(-1, 3), axis=0)) > 20 for img in a)  # many shapes, not a flat colour
    out = tmp_path / "leaves"
    assert main(["--out", str(out), "--count", "3"]) == 0
    loaded = load_unlabeled(out, 32, "bicubic", use_cache=False, progress=False)
    assert np.array_equal(loaded.images, dead_leaves(3, seed=0))  # PNG is lossless; chunk 0 uses seed 0
    assert (loaded.labels == -1).all() and loaded.classes == []
    with pytest.raises(SystemExit):  # a second run would mix its images with these
        main(["--out", str(out), "--count", "3"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        load_unlabeled(tmp_path / "empty", 32)


def test_train_acc_counts_only_the_examples_a_criterion_counts_and_a_newer_setting_is_refused_on_resume():
    from training.backbone_training import check_same_recipe
    from training.loop import train_epoch

    model = torch.nn.Linear(2, 2)
    x = torch.zeros(4, 2)

    def half_counted(out, y):  # 1 right of the 2 examples that have a label, in each batch of 4
        return out.sum() * 0.0, (1, 2), {}

    result = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()),
                         lambda i: (x, torch.zeros(4)), 3, lambda step: 0.1, 0, grad_clip=None, label_smoothing=0.0,
                         device=torch.device("cpu"), progress=False, criterion=half_counted)
    assert result["train_acc"] == pytest.approx(0.5)  # 3 right of 6 counted, not of the 12 seen
    # a checkpoint written before `unlabeled` existed ran without it: resuming it with the images is another recipe
    check_same_recipe({"lr": 1.0}, {"lr": 1.0, "unlabeled": None}, frozenset(), defaults={"unlabeled": None})
    with pytest.raises(ValueError, match="unlabeled=None vs 'x'"):
        check_same_recipe({"lr": 1.0}, {"lr": 1.0, "unlabeled": "x"}, frozenset(), defaults={"unlabeled": None})


def test_trainable_keeps_every_classifier_of_a_distilled_deit_and_names_weights_when_none_match():
    """A distilled DeiT has two heads (get_classifier() is a tuple): both always train, neither counts as a
    backbone weight the pattern chose."""
    import timm

    from training.methods import freeze_all_but, trainable_weights

    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=32,
                              num_heads=2, num_classes=3)
    assert not any(n.startswith(("head.", "head_dist.")) for n in trainable_weights(model, "."))
    n = freeze_all_but(model, r"^blocks\.1\.")
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head_dist.weight"} <= trained and all(
        t.startswith(("blocks.1.", "head.", "head_dist.")) for t in trained), trained
    assert n == sum(p.numel() for name, p in model.named_parameters() if name in trained)
    with pytest.raises(TrainConfigError, match=r"they look like .*patch_embed\.proj\.weight, blocks\.0\.norm1"):
        trainable_weights(model, "^decoder")
