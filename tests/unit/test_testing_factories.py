"""promptserve.testing: its factories are deterministic in their seed, leave the global RNG where it was, and
build what their arguments ask for."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from promptserve.backbone import random_tiny_backbone
from promptserve.testing import random_images, random_prompt_set, tiny_backbone


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def leaves_the_global_rng_alone(build: Callable[[], object]) -> None:
    torch.manual_seed(12345)
    torch.rand(3)  # a state no factory seed gives
    before = torch.get_rng_state()
    build()
    assert torch.equal(torch.get_rng_state(), before)


def test_tiny_backbone_is_its_seed_and_leaves_the_global_rng_alone():
    a, b = tiny_backbone(seed=0), tiny_backbone(seed=0)
    assert a.fingerprint == b.fingerprint
    assert tiny_backbone(seed=1).fingerprint != a.fingerprint
    leaves_the_global_rng_alone(lambda: tiny_backbone(seed=0))


def test_tiny_backbone_takes_its_shape_from_arguments(bb):
    assert (bb.num_layers, bb.embed_dim, bb.num_heads, bb.data_config.input_size) == (3, 64, 2, 32)
    small = tiny_backbone(img_size=16, patch_size=4, depth=2, embed_dim=32, num_classes=3)
    assert (small.num_layers, small.embed_dim, small.num_patches, small.model.num_classes) == (2, 32, 16, 3)
    # two blocks are the random-tiny backbone servers build, weights included
    assert tiny_backbone(depth=2).fingerprint == random_tiny_backbone().fingerprint


def test_random_prompt_set_is_its_seed_and_leaves_the_global_rng_alone(bb):
    a, b, c = (random_prompt_set(bb, seed=s) for s in (4, 4, 5))
    assert a.tensors.keys() == b.tensors.keys() == c.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not any(torch.equal(a.tensors[k], c.tensors[k]) for k in a.tensors)
    leaves_the_global_rng_alone(lambda: random_prompt_set(bb, seed=4))


def test_random_prompt_set_has_the_asked_shapes_and_serves_on_its_backbone(bb):
    ragged = random_prompt_set(bb, visual=[3, 0, 5], kv=[2, 4, 0], classes=7)
    ragged.validate(bb)
    assert [None if (v := ragged.visual(i)) is None else tuple(v.shape) for i in range(3)] == [(3, 64), None, (5, 64)]
    assert ragged.tensors["kv.1"].shape == (2, 4, 32) and ragged.kv(2) is None
    assert ragged.tensors["head.weight"].shape == (7, 64) and ragged.labels == [f"c{j}" for j in range(7)]
    assert (ragged.config.visual_tokens, ragged.config.kv_tokens, ragged.method) == ([3, 0, 5], [2, 4, 0], "e2vpt")

    shallow = random_prompt_set(bb, visual=2, kv=1, deep=False, shared=False, classes=["x", "y"])
    shallow.validate(bb)
    assert shallow.visual(0).shape == (2, 64) and shallow.visual(1) is None and not shallow.deep
    assert {"key.0", "value.0"} <= shallow.tensors.keys() and "kv.0" not in shallow.tensors
    assert shallow.labels == ["x", "y"]

    head = (torch.ones(3, 64), torch.zeros(3))
    linear = random_prompt_set(bb, visual=0, kv=0, classes=3, head=head)
    linear.validate(bb)
    assert linear.method == "linear" and linear.num_prompt_params() == 0
    assert torch.equal(linear.tensors["head.weight"], head[0])


def test_random_images_are_their_seed_and_leave_the_global_rng_alone():
    assert random_images(2, size=16).shape == (2, 3, 16, 16)
    assert torch.equal(random_images(2, seed=3), random_images(2, seed=3))
    assert not torch.equal(random_images(2, seed=3), random_images(2, seed=4))
    leaves_the_global_rng_alone(lambda: random_images(2))
