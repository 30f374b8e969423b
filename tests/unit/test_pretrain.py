"""`promptserve pretrain`: a smoke run writes weights `Backbone.from_file` loads, and resuming is explicit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from promptserve.backbone import Backbone
from training import cli

TINY = '{"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}'


@pytest.fixture()
def app():
    app = typer.Typer()
    app.command("pretrain")(cli.pretrain)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTSERVE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in ("a", "b"):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for j in range(n):
                img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / "ds" / split / c / f"{j}.png")
    return tmp_path / "ds"


def _run(app, folder, out, *extra):
    return CliRunner().invoke(app, ["pretrain", "--data", str(folder), "--out", str(out), "--model-kwargs", TINY,
                                    "--batch-size", "8", "--threads", "1", "--warmup-epochs", "0.5", *extra])


def test_pretrain_writes_loadable_weights_and_resumes_only_when_asked(app, folder, tmp_path):
    out = tmp_path / "bb.safetensors"
    first = _run(app, folder, out, "--epochs", "1")
    assert first.exit_code == 0, first.output
    bb = Backbone.from_file(out)
    assert bb.embed_dim == 32 and bb.num_layers == 1
    ckpt = out.with_suffix(".ckpt.pt")
    assert ckpt.exists()

    again = _run(app, folder, out, "--epochs", "1")  # a checkpoint exists: never silently restart or continue
    assert again.exit_code == 2 and "--resume" in again.output

    changed = _run(app, folder, out, "--epochs", "1", "--lr", "0.002", "--resume")  # other recipe: refused
    assert changed.exit_code == 2 and "lr=" in changed.output

    done = _run(app, folder, out, "--epochs", "1", "--resume")  # same recipe, finished: nothing left to train
    assert done.exit_code == 0, done.output
    history = json.loads(done.output.strip().splitlines()[-1])
    assert history["epoch"] == 1 and 0.0 <= history["test_acc"] <= 1.0


def test_backbone_runs_exempt_the_position_embedding_from_weight_decay_and_prompt_training_does_not():
    """One rule (training.loop.make_optimizer) with one parameter: pretraining and distillation also exempt
    pos_embed, as they always have; their checkpoints' optimizer state fits only these groups, in this order."""
    import timm

    from training import backbone_training
    from training.loop import make_optimizer
    from training.pretrain import PretrainConfig

    model = timm.create_model("vit_tiny_patch16_224", **json.loads(TINY))
    names = {id(p): n for n, p in model.named_parameters()}
    cfg = PretrainConfig(data="-", out="-")
    opt = backbone_training.optimizer(model, cfg)
    decayed, rest = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    in_order = [n for n, p in model.named_parameters()]
    assert decayed == [n for n in in_order if n in decayed] and rest == [n for n in in_order if n in rest]
    assert "pos_embed" in rest and "cls_token" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert all(model.get_parameter(n).ndim <= 1 for n in rest if n != "pos_embed")
    prompt_rule = make_optimizer(list(model.parameters()), "sgd", 0.1, 1e-4)
    assert "pos_embed" in [names[id(p)] for p in prompt_rule.param_groups[0]["params"]]
