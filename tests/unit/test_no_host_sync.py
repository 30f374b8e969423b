"""The served forward reads nothing back from the device (issue 22 item 6): on a GPU each read is a host-device
sync, and the forward had one per layer. On a CPU the same reads are caught by making them fail: within
`forward_batch`, no tensor is turned into a Python bool, int, float or list. The facts the forward needs come
with the batch (`PromptBatch.all_deep`, `mask_free`), computed on the host by the bank; the answers are the same
as when the forward computes them itself."""

from __future__ import annotations

import pytest
import torch

import promptserve as ps
from promptserve.testing import random_images, random_prompt_set, tiny_backbone


class ReadBack(AssertionError):
    pass


@pytest.fixture
def no_read_back(monkeypatch):
    def refuse(*args, **kwargs):
        raise ReadBack("a tensor was read back to the host inside the forward")

    def patch():
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
    return patch


@pytest.mark.parametrize("visual, kv", [([3, 0, 2], [2, 2, 0]), (1, 1), (0, 0)])
def test_a_mixed_all_deep_batch_reads_nothing_back(no_read_back, monkeypatch, visual, kv):
    bb = tiny_backbone()
    model = ps.PromptedViT(bb)
    sets = {f"t{i}": random_prompt_set(bb, visual=visual if i else 2, kv=kv if i else 1, seed=i) for i in range(3)}
    for name, s in sets.items():
        model.add_task(name, s)
    x = random_images(6)
    tasks = ["t0", "t1", "t2", "t1", "t0", "t2"]
    batch = model.bank.gather(tasks)
    assert batch.all_deep and batch.mask_free is not None
    reference = model.forward_batch(x, ps.PromptBatch(**{**batch.__dict__, "all_deep": None, "mask_free": None}))
    no_read_back()
    with torch.inference_mode():
        logits = model.forward_batch(x, batch)
    monkeypatch.undo()
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-6)


def test_without_the_hints_the_forward_still_reads_back(no_read_back):
    """The check itself can fail: the same forward without the host-side facts does read the device."""
    bb = tiny_backbone()
    model = ps.PromptedViT(bb)
    for i in range(2):
        model.add_task(f"t{i}", random_prompt_set(bb, visual=[2, 1, 3][: bb.num_layers], kv=1, seed=i))
    batch = model.bank.gather(["t0", "t1"])
    stripped = ps.PromptBatch(**{**batch.__dict__, "all_deep": None, "mask_free": None})
    no_read_back()
    with pytest.raises(ReadBack), torch.inference_mode():
        model.forward_batch(random_images(2), stripped)
