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
