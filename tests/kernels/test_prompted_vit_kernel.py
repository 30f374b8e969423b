"""End to end: PromptedViT logits with the Triton kernel forced equal those with the reference path."""

from __future__ import annotations

import torch

import promptserve as ps
from promptserve.testing import random_images, random_prompt_set, tiny_backbone
from tests.gpu import kernel_device, requires_kernel


@requires_kernel
def test_prompted_vit_kernel_equals_reference_on_a_mixed_batch():
    bb = tiny_backbone(seed=3)
    device = kernel_device()
    by_impl = {}
    for impl in ("reference", "triton"):
        model = ps.PromptedViT(bb, device=device, attention_impl=impl)
        model.add_task("a", random_prompt_set(bb, visual=[3, 0, 5], kv=[2, 4, 0], seed=1))
        model.add_task("b", random_prompt_set(bb, visual=[2, 0, 0], kv=[1, 2, 3], deep=False, seed=2, classes=7))
        model.add_task("c", random_prompt_set(bb, visual=0, kv=[5, 5, 5], shared=False, seed=3))
        by_impl[impl] = model(random_images(5, seed=1).to(device), ["a", "b", "c", "b", "a"]).cpu()
    torch.testing.assert_close(by_impl["triton"], by_impl["reference"], atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isinf(by_impl["triton"]), torch.isinf(by_impl["reference"]))
