"""Invariants 1 and 2 and the E2VPT math of PromptedViT, on tiny random backbones."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import promptserve as ps
from promptserve.testing import random_images, random_prompt_set, tiny_backbone

ATOL = 1e-5


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def own_head_set(bb: ps.Backbone) -> ps.PromptSet:
    w, b = bb.own_head()
    return ps.PromptSet({"head.weight": w, "head.bias": b}, backbone_fingerprint=bb.fingerprint,
                        labels=[str(i) for i in range(w.shape[0])])


@pytest.mark.parametrize("overrides", [{}, {"global_pool": "avg", "class_token": False, "fc_norm": True}],
                         ids=["cls-token", "avg-pool-no-cls"])
def test_invariant1_no_prompts_and_own_head_give_timm_logits(overrides):
    bb = tiny_backbone(seed=1, **overrides)
    model = ps.PromptedViT(bb)
    model.add_task("plain", own_head_set(bb))
    x = random_images(4)
    with torch.no_grad():
        expected = bb.model(x)
    torch.testing.assert_close(model(x, ["plain"] * 4), expected, atol=ATOL, rtol=0)


# (visual lengths per layer, kv lengths per layer, deep, shared) for the resident tasks: ragged, zeros included
TASKS = {
    "a": dict(visual=[3, 0, 5], kv=[2, 4, 0]),
    "b": dict(visual=[1, 6, 2], kv=[0, 1, 3]),
    "none": dict(visual=0, kv=0),
    "kvonly": dict(visual=0, kv=[5, 5, 5], shared=False),
    "visonly": dict(visual=[4, 4, 4], kv=0),
    "shallow": dict(visual=[6, 0, 0], kv=[1, 2, 3], deep=False),
    "shallow2": dict(visual=[2, 0, 0], kv=0, deep=False, shared=False),
}


@pytest.fixture(scope="module")
def model(bb):
    m = ps.PromptedViT(bb)
    for seed, (name, spec) in enumerate(TASKS.items()):
        m.add_task(name, random_prompt_set(bb, classes=3 + seed, seed=seed, **spec))
    return m


def single_task_logits(model, x, names):
    """Each sample through a batch of its own task alone (the reference for mixed-task batches)."""
    out = []
    for i, name in enumerate(names):
        out.append(model(x[i:i + 1], [name])[0])
    return out


@pytest.mark.parametrize("names", [
    ["a", "b", "a", "none", "kvonly", "visonly", "shallow", "shallow2"],  # every kind in one batch
    ["shallow", "a", "shallow2"],  # deep and shallow mixed
    ["b"],  # a batch of one
    ["none", "a"],  # a task with no prompts next to one with prompts
    ["kvonly", "visonly", "b", "a", "shallow", "none", "shallow2"],  # every sample a different task
])
def test_invariant2_mixed_batch_equals_single_task_batches(model, names):
    x = random_images(len(names), seed=len(names))
    mixed = model(x, names)
    for i, expected in enumerate(single_task_logits(model, x, names)):
        c = expected.shape[0]
        torch.testing.assert_close(mixed[i, :c], expected, atol=ATOL, rtol=1e-5)
        assert torch.isinf(mixed[i, c:]).all() and (mixed[i, c:] < 0).all()


def test_same_task_batch_equals_per_image(model):
    x = random_images(5, seed=3)
    batched = model(x, ["a"] * 5)
    for i in range(5):
        torch.testing.assert_close(batched[i], model(x[i:i + 1], ["a"])[0], atol=ATOL, rtol=1e-5)


def _blocks_with_visual(bb, x_seq, visual_per_layer, deep=True):
    """Independent VPT forward: timm's own Block.forward on [CLS, prompts, patches]."""
    vit = bb.model
    m_prev = 0
    for i, blk in enumerate(vit.blocks):
        p = visual_per_layer.get(i)
        if deep or i == 0:
            prompts = p[None].expand(x_seq.shape[0], -1, -1) if p is not None else x_seq[:, 1:1]
            x_seq = torch.cat([x_seq[:, :1], prompts, x_seq[:, 1 + m_prev:]], dim=1)
            m_prev = prompts.shape[1]
        x_seq = blk(x_seq)
    x_seq = vit.norm(x_seq)
    return x_seq[:, 0]


@pytest.mark.parametrize("deep", [True, False])
def test_visual_prompts_sit_after_cls_without_position_embedding(bb, deep):
    ps_set = random_prompt_set(bb, visual=[3, 0, 2], kv=0, deep=deep, seed=7)
    model = ps.PromptedViT(bb)
    model.add_task("t", ps_set)
    x = random_images(2, seed=5)
    with torch.no_grad():
        seq = bb.model._pos_embed(bb.model.patch_embed(x))  # (B, 1 + Np, D), CLS + pos embed only
        feats = _blocks_with_visual(bb, seq, {i: ps_set.visual(i) for i in range(3) if ps_set.visual(i) is not None},
                                    deep=deep)
        expected = F.linear(feats, ps_set.tensors["head.weight"], ps_set.tensors["head.bias"])
    torch.testing.assert_close(model(x, ["t"] * 2), expected, atol=ATOL, rtol=1e-5)


def test_key_value_prompts_match_a_handwritten_attention(bb):
    """Layer-0 K/V prompts: K' = [P_K ; K], V' = [P_V ; V] per head, the query unprompted."""
    H, d, P = bb.num_heads, bb.head_dim, 4
    g = torch.Generator().manual_seed(11)
    pk, pv = torch.randn(H, P, d, generator=g), torch.randn(H, P, d, generator=g)
    w, b = bb.own_head()
    prompt_set = ps.PromptSet({"key.0": pk, "value.0": pv, "head.weight": w, "head.bias": b},
                              backbone_fingerprint=bb.fingerprint, labels=[str(i) for i in range(w.shape[0])])
    model = ps.PromptedViT(bb)
    model.add_task("kv", prompt_set)
    x = random_images(2, seed=9)
    vit = bb.model
    with torch.no_grad():
        h = vit._pos_embed(vit.patch_embed(x))
        blk = vit.blocks[0]
        y = blk.norm1(h)
        B, N, D = y.shape
        q, k, v = blk.attn.qkv(y).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
        attn = ((q @ k.transpose(-1, -2)) * d ** -0.5).softmax(-1)
        a = blk.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, D))
        h = h + a
        h = h + blk.mlp(blk.norm2(h))
        for later in vit.blocks[1:]:
            h = later(h)
        expected = vit.head(vit.norm(h)[:, 0])
    torch.testing.assert_close(model(x, ["kv", "kv"]), expected, atol=ATOL, rtol=1e-5)


def test_add_task_replacement_is_atomic_while_forwards_run(bb):
    model = ps.PromptedViT(bb)
    old, new = random_prompt_set(bb, seed=1), random_prompt_set(bb, visual=[6, 1, 2], kv=[3, 0, 1], seed=2)
    x = random_images(3, seed=4)
    ref = {}
    for prompt_set in (old, new):
        model.add_task("t", prompt_set)
        ref[prompt_set.version] = model(x, ["t"] * 3)
    model.add_task("t", old)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            logits, versions, _ = model.classify(x, ["t"] * 3)
            if len(set(versions)) != 1 or not torch.allclose(logits, ref[versions[0]], atol=ATOL, rtol=1e-5):
                errors.append(versions)
            seen.append(versions[0])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):
        model.add_task("t", new if i % 2 == 0 else old)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, f"mixed state seen: {errors[:3]}"
    assert len(seen) > 0


def test_forward_errors_name_the_problem(model):
    x = random_images(2)
    with pytest.raises(KeyError, match="nope"):
        model(x, ["a", "nope"])
    with pytest.raises(ValueError, match="2 images but 1 task"):
        model(x, ["a"])


def test_remove_task_and_reuse_of_its_row(bb):
    model = ps.PromptedViT(bb)
    a, b = random_prompt_set(bb, seed=1), random_prompt_set(bb, seed=2, visual=[9, 9, 9])
    model.add_task("a", a)
    x = random_images(1)
    before = model(x, ["a"])
    model.add_task("b", b)
    model.remove_task("b")
    assert model.tasks == ["a"]
    model.add_task("c", random_prompt_set(bb, seed=3))
    torch.testing.assert_close(model(x, ["a"]), before, atol=ATOL, rtol=1e-5)
    with pytest.raises(KeyError):
        model(x, ["b"])


def test_prompt_batch_for_one_task_is_differentiable(bb):
    model = ps.PromptedViT(bb)
    D, H, d = bb.embed_dim, bb.num_heads, bb.head_dim
    vis = torch.zeros(3, D, requires_grad=True)
    kv = torch.zeros(H, 2, d, requires_grad=True)
    head_w = torch.zeros(4, D, requires_grad=True)
    head_b = torch.zeros(4, requires_grad=True)
    batch = ps.PromptBatch.for_one_task(2, bb.num_layers, {0: vis, 2: vis}, {1: kv}, None, head_w, head_b)
    loss = model.forward_batch(random_images(2), batch).logsumexp(-1).sum()
    loss.backward()
    assert vis.grad is not None and kv.grad is not None and head_w.grad is not None
    assert all(p.grad is None for p in bb.model.parameters())
