"""The OpenVINO backend (issue 22): the same logits as the torch reference (float32, within 1e-4) on awkward task
mixes, prompts as inputs (a hot swap compiles nothing), a bounded number of compiled variants."""

from __future__ import annotations

import pytest
import torch

from promptserve.backends import BACKENDS, backends_for, open_backend
from promptserve.testing import random_images, random_prompt_set, tiny_backbone

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

from promptserve.openvino_backend import bucket  # noqa: E402 (needs openvino)

ATOL = 1e-4

# per-layer visual and key/value prompt lengths of the resident tasks (3 layers): ragged, zeros, none at all,
# separate keys and values, shallow sets that carry layer 0's prompts through
AWKWARD = {
    "ragged": dict(visual=[2, 0, 7], kv=[3, 1, 0]),
    "long": dict(visual=[9, 9, 1], kv=[0, 6, 2], shared=False),
    "plain": dict(visual=0, kv=0),
    "kv": dict(visual=0, kv=[4, 0, 4]),
    "visual": dict(visual=[5, 5, 5], kv=0),
    "shallow": dict(visual=[3, 0, 0], kv=[2, 2, 2], deep=False),
    "shallow-bare": dict(visual=[4, 0, 0], kv=0, deep=False),
}


def backends(bb, tasks=AWKWARD, **openvino_options):
    torch_backend, openvino = open_backend("torch", bb), open_backend("openvino", bb)
    openvino.__dict__.update(openvino_options)
    for seed, (name, spec) in enumerate(tasks.items()):
        ps = random_prompt_set(bb, classes=2 + 3 * seed, seed=seed, **spec)
        torch_backend.model.add_task(name, ps)
        openvino.model.add_task(name, ps)
    return torch_backend, openvino


def assert_same_logits(expected: torch.Tensor, got: torch.Tensor) -> None:
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(torch.isinf(got), torch.isinf(expected))  # -inf beyond each sample's classes, nowhere else
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


@pytest.mark.parametrize("names", [
    ["ragged", "long", "plain", "kv", "visual", "shallow", "shallow-bare"],  # one row per task, every kind
    ["shallow", "ragged", "shallow", "long", "ragged"],  # deep and shallow mixed, 5 rows padded to 8
    ["shallow", "shallow-bare", "shallow"],  # every row shallow
    ["plain", "plain"],  # no prompts in any layer: no prompt inputs at all
    ["kv", "plain", "kv"],  # key/value prompts only
    ["visual"],  # a batch of one
    ["long"] * 9 + ["plain"] * 4,  # 13 rows, two tasks, padded to 16
])
def test_openvino_float32_matches_torch(bb, names):
    torch_backend, openvino = backends(bb)  # fresh: the shapes are this batch's own, not widened by earlier ones
    x = random_images(len(names), seed=len(names))
    assert_same_logits(torch_backend(x, names), openvino(x, names))


@pytest.mark.parametrize("overrides", [{"global_pool": "avg", "class_token": False, "fc_norm": True}],
                         ids=["avg-pool-no-cls"])
def test_openvino_matches_torch_on_another_pooling(overrides):
    torch_backend, openvino = backends(tiny_backbone(seed=3, **overrides))
    names = ["ragged", "shallow", "plain", "long"]
    x = random_images(4, seed=4)
    assert_same_logits(torch_backend(x, names), openvino(x, names))


def test_a_hot_swap_compiles_nothing_and_serves_the_new_version(bb):
    torch_backend, openvino = backends(bb, {"a": dict(visual=[3, 2, 1], kv=[2, 2, 2]), "b": dict(visual=1, kv=1)})
    x = random_images(4, seed=7)
    names = ["a", "b", "b", "a"]
    before = openvino(x, names)
    compiled = openvino.compiled
    swapped = random_prompt_set(bb, visual=[4, 1, 0], kv=[1, 2, 1], classes=4, seed=99)  # same buckets
    for backend in (torch_backend, openvino):
        backend.model.add_task("a", swapped)
    after = openvino(x, names)
    assert openvino.compiled == compiled  # the prompts are inputs of the graph
    assert_same_logits(torch_backend(x, names), after)
    assert not torch.allclose(before[0, :2], after[0, :2])


@pytest.mark.parametrize("tasks", [["ragged", "shallow"], ["shallow", "shallow-bare"], ["plain", "kv"]],
                         ids=["mixed", "shallow", "no-visual-prompts"])
def test_one_trace_serves_every_batch_size(bb, tasks):
    """Traced once (on two rows) and compiled per batch size: each size still gives the reference's logits."""
    torch_backend, openvino = backends(bb, {name: AWKWARD[name] for name in tasks})
    for n in (2, 1, 3, 13):
        names = [tasks[i % 2] for i in range(n)] if n > 1 else [tasks[1]]
        x = random_images(n, seed=n)
        assert_same_logits(torch_backend(x, names), openvino(x, names))
    assert openvino.compiled == 4 and openvino.traced == len({v.graph for v in openvino.variants}) < 4


def test_narrower_mixes_reuse_the_widest_graph(bb):
    """Once the widest tasks were served together, a batch of narrower ones (fewer slots, fewer classes, another
    path) of a batch size seen before compiles nothing: traffic over many tasks must not recompile per mix."""
    torch_backend, openvino = backends(bb, {name: AWKWARD[name] for name in ("long", "shallow", "plain", "kv")})
    openvino(random_images(4), ["long", "shallow", "plain", "kv"])  # what the server's warm-up does
    assert openvino.compiled == 1
    for names in (["plain"] * 3, ["kv", "plain", "kv", "kv"], ["shallow"] * 4, ["long", "kv"] * 2):
        x = random_images(len(names), seed=len(names))
        assert_same_logits(torch_backend(x, names), openvino(x, names))
    assert openvino.compiled == 1 and openvino.traced == 1


def test_the_compiled_variants_are_bounded(bb):
    _, openvino = backends(bb, {"a": dict(visual=2, kv=2)}, max_variants=2)
    for n in (1, 2, 3, 4, 8):  # batch buckets 1, 2, 4, 4, 8
        openvino(random_images(n), ["a"] * n)
    assert openvino.compiled == 4 and [v.batch for v in openvino.variants] == [4, 8] and openvino.traced == 1
    openvino(random_images(1), ["a"])  # evicted: compiled again, from the graph traced before
    assert openvino.compiled == 5 and [v.batch for v in openvino.variants] == [8, 1] and openvino.traced == 1


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (0, 1, 2, 3, 4, 5, 31, 32, 33)] == [0, 1, 2, 4, 4, 8, 32, 32, 64]


def test_which_backends_run_where(bb):
    assert backends_for(torch.device("cpu")) == list(BACKENDS)
    assert backends_for(torch.device("meta")) == ["torch"]
    with pytest.raises(ValueError, match="CPU"):
        open_backend("openvino", bb, device="meta")
    with pytest.raises(ValueError, match="auto is decided"):
        open_backend("auto", bb)


def test_eval_reports_accuracy_and_agreement_on_openvino(tmp_path):
    """`promptserve eval --backend openvino` scores a prompt set as a server on OpenVINO would, beside torch."""
    import json

    import typer
    from PIL import Image
    from typer.testing import CliRunner

    from promptserve.backbone import random_tiny_backbone
    from training import cli

    task = tmp_path / "task.safetensors"
    random_prompt_set(random_tiny_backbone(), visual=[2, 3], kv=[1, 0], classes=3, seed=5).save(task)
    rng = torch.Generator().manual_seed(0)
    for label in ("c0", "c1", "c2"):
        (tmp_path / "data" / "test" / label).mkdir(parents=True)
        for i in range(5):
            pixels = (torch.rand(32, 32, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / "test" / label / f"{i}.png")
    app = typer.Typer()
    app.command("eval")(cli.evaluate)
    app.command("unused")(lambda: None)  # two commands: typer keeps the `eval` name
    scores = {}
    for backend in ("torch", "openvino"):
        result = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "data"), "--task", str(task),
                                          "--backend", backend])
        assert result.exit_code == 0, result.output
        scores[backend] = json.loads(result.output.strip().splitlines()[-1])
    assert scores["openvino"]["backend"] == "openvino" and scores["openvino"]["agreement_with_float32"] == 1.0
    assert scores["openvino"]["accuracy"] == scores["torch"]["accuracy"] and scores["openvino"]["images"] == 15
