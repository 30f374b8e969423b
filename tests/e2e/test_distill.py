"""`promptserve distill` and `promptserve probe` end to end: the real TFLite teacher from ../shared/teachers on a
synthetic ImageFolder and a tiny backbone file; the view cache's determinism and its refusal to mix recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from promptserve.backbone import Backbone

# the synthetic folder and tiny backbone file, and the per-test decode cache (autouse), as train's tests use them
from tests.e2e.test_train_cli import (  # noqa: F401
    TIMM_KWARGS,
    _isolated_cache,
    backbone_file,
    folder,
)
from training import cli
from training.teacher import TeacherError, ViewRecipe, draw_views

TEACHER = Path(__file__).resolve().parents[3] / "shared" / "teachers" / \
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
needs_teacher = pytest.mark.skipif(not TEACHER.is_file(), reason=f"no teacher file at {TEACHER} "
                                   "(../shared/teachers is the team's shared folder, absent on a bare clone)")


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    app.command("distill")(cli.distill)
    app.command("probe")(cli.probe)
    return app


def test_views_are_seeded_and_keep_their_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    a = draw_views(images, labels, 3, ViewRecipe(seed=1, mix=0.5))
    b = draw_views(images, labels, 3, ViewRecipe(seed=1, mix=0.5))
    c = draw_views(images, labels, 4, ViewRecipe(seed=1, mix=0.5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # same set, same pixels
    assert not np.array_equal(a[0], c[0])  # another view set, other crops
    views, label_a, label_b, weight = a
    assert views.shape == images.shape and views.dtype == np.uint8
    assert np.array_equal(label_a, labels)
    unmixed = weight == 1
    assert np.array_equal(label_b[unmixed], labels[unmixed]) and 0 < unmixed.sum() < 40
    # flat images: a crop or flip of one is its colour, so a view must be exactly its recorded blend
    colours = rng.integers(0, 256, (40, 3))
    flat = np.broadcast_to(colours[:, None, None, :], images.shape).astype(np.uint8)
    views, label_a, label_b, weight = draw_views(flat, np.arange(40), 0, ViewRecipe(mix=1.0))
    partner = label_b  # labels are the image indices here, so label_b names the partner image
    blend = weight[:, None] * colours + (1 - weight[:, None]) * colours[partner]
    assert np.abs(views[:, 8, 8].astype(float) - blend).max() <= 1


@needs_teacher
def test_teacher_embeds_any_size_deterministically():
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    from training.teacher import Teacher

    teacher = Teacher(TEACHER, threads=1, batch=4)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    e1, e2 = teacher.embed(images), teacher.embed(images[::-1].copy())[::-1]
    assert e1.shape == (6, 1024) and e1.dtype == np.float32 and (e1 >= 0).all()
    assert np.array_equal(e1, e2)  # a padded last batch and the order change nothing
    assert not np.array_equal(e1[0], e1[1])
    with pytest.raises(TeacherError, match="does not exist"):
        Teacher(TEACHER.with_name("missing.tflite"))


@needs_teacher
def test_distill_cli_trains_resumes_and_exports_a_backbone(app, tmp_path, backbone_file, folder):  # noqa: F811
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    pytest.importorskip("sklearn", reason="the [distill] extra is not installed")
    out = tmp_path / "student.safetensors"
    args = ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init", str(backbone_file), "--out",
            str(out), "--epochs", "2", "--views", "2", "--batch-size", "8", "--amp", "off", "--probe", str(folder),
            "--cache", str(tmp_path / "views")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in rows[:3]] == [0, 1, 2]  # the probe curve starts at the initial weights
    assert all(0 <= r["probe"]["mean"] <= 1 for r in rows[:3]) and rows[2]["test_images"] == 18
    assert sorted((tmp_path / "views").glob("view-*.npz")) == [tmp_path / "views" / "view-0.npz",
                                                               tmp_path / "views" / "view-1.npz"]
    student = Backbone.from_file(out)  # a backbone file like pretrain's: serve / train take it as it is
    assert student.embed_dim == TIMM_KWARGS.get("embed_dim") and student.num_layers == 2
    initial = Backbone.from_file(backbone_file)
    assert student.fingerprint != initial.fingerprint
    ckpt = torch.load(out.with_suffix(".ckpt.pt"), weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["config"]["views"] == 2

    again = CliRunner().invoke(app, args)  # an existing checkpoint is never overwritten silently
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(app, [*args, "--resume", "--epochs", "3"])
    assert resumed.exit_code == 2 and "epochs=2 vs 3" in resumed.output  # another schedule is another recipe
    done = CliRunner().invoke(app, [*args, "--resume", "--threads", "1"])
    assert done.exit_code == 0 and "resumed" in done.output


@needs_teacher
def test_distill_depth_grows_the_init_backbone(app, tmp_path, backbone_file, folder):  # noqa: F811
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    base = ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init", str(backbone_file),
            "--epochs", "1", "--views", "1", "--batch-size", "8", "--amp", "off", "--cache", str(tmp_path / "v")]
    out = tmp_path / "deeper.safetensors"
    grown = CliRunner().invoke(app, [*base, "--out", str(out), "--depth", "3"])
    assert grown.exit_code == 0, grown.output + repr(grown.exception)
    assert "from 2 to 3 blocks" in grown.output and Backbone.from_file(out).num_layers == 3
    shrink = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "s.safetensors"), "--depth", "1"])
    assert shrink.exit_code == 2 and "blocks are only added" in shrink.output


@needs_teacher
def test_a_cache_of_another_recipe_is_refused(app, tmp_path, backbone_file, folder):  # noqa: F811
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    base = ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init", str(backbone_file),
            "--epochs", "1", "--views", "1", "--batch-size", "8", "--amp", "off", "--cache", str(tmp_path / "v")]
    first = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a.safetensors")])
    assert first.exit_code == 0, first.output
    other = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b.safetensors"), "--mix", "0"])
    assert other.exit_code == 2 and "another teacher, recipe or image set" in other.output


def test_probe_cli_separates_separable_classes(app, backbone_file, folder):  # noqa: F811
    pytest.importorskip("sklearn", reason="the [distill] extra is not installed")
    result = CliRunner().invoke(app, ["probe", "--backbone", str(backbone_file), "--data", str(folder), "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.output)
    (row,) = report["tasks"]
    assert (row["train"], row["test"]) == (48, 18)
    assert row["accuracy"] >= 0.8  # three colours: even random features separate them linearly
    table = CliRunner().invoke(app, ["probe", "--backbone", str(backbone_file), "--data", str(folder)])
    assert table.exit_code == 0 and "mean" in table.output
    missing = CliRunner().invoke(app, ["probe", "--backbone", str(backbone_file), "--data", str(folder / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@needs_teacher
def test_unlabeled_images_join_the_views_with_the_distillation_term_only(app, tmp_path, backbone_file,  # noqa: F811
                                                                         folder):  # noqa: F811
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    from training.synthetic import main as write_dead_leaves

    extra = tmp_path / "leaves"
    assert write_dead_leaves(["--out", str(extra), "--count", "20", "--seed", "3"]) == 0
    base = ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init", str(backbone_file),
            "--epochs", "1", "--views", "1", "--batch-size", "4", "--amp", "off", "--cache", str(tmp_path / "v")]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a.safetensors"), "--unlabeled", str(extra)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "20 images join every epoch" in result.output and "48 images + 20 unlabeled x 1 view sets" in result.output
    (train_views,) = (tmp_path / "v").glob("view-*.npz")
    (extra_cache,) = (tmp_path / "v").glob("unlabeled-*")  # apart: the train split's cache serves runs without
    with np.load(extra_cache / "view-0.npz") as z:
        assert len(z["views"]) == 20 and (z["label_a"] == -1).all() and (z["label_b"] == -1).all()
    row = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")][-1]
    assert 0 <= row["train_acc"] <= 1  # its denominator, the labelled views: tests/unit/test_training.py
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b.safetensors"), "--unlabeled", str(empty)])
    assert none.exit_code == 2 and "--unlabeled" in none.output and "no image files" in none.output
    missing = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c.safetensors"), "--unlabeled",
                                       str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "--unlabeled" in missing.output and "does not exist" in missing.output
    for judged in (folder, folder / "test"):  # the train data, or a part of it: its test images would leak
        leak = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "d.safetensors"), "--unlabeled", str(judged)])
        assert leak.exit_code == 2 and "overlaps" in leak.output, leak.output


@needs_teacher
def test_distill_fit_reports_how_much_of_the_teacher_a_run_explains(app, tmp_path, backbone_file,  # noqa: F811
                                                                    folder, capsys):  # noqa: F811
    pytest.importorskip("ai_edge_litert", reason="the [distill] extra is not installed")
    from training.experiments.distill_fit import main as distill_fit

    out = tmp_path / "s.safetensors"
    result = CliRunner().invoke(app, ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init",
                                      str(backbone_file), "--out", str(out), "--epochs", "1", "--views", "1",
                                      "--batch-size", "8", "--amp", "off", "--cache", str(tmp_path / "v"),
                                      "--projector", "mlp"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "mlp projector" in result.output
    checkpoint = str(out.with_suffix(".ckpt.pt"))
    assert distill_fit(["--checkpoint", checkpoint, "--images", "6"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 6
    for split in ("train", "test"):  # a finite fit of 6 images of each split
        assert np.isfinite(report[split]["mse"]) and np.isfinite(report[split]["r2"])
    moved = out.rename(tmp_path / "elsewhere.safetensors")  # checkpoint alone: the architecture from --backbone
    with pytest.raises(SystemExit) as missing:
        distill_fit(["--checkpoint", checkpoint, "--images", "6"])
    assert missing.value.code == 2 and "pass --backbone" in capsys.readouterr().err
    assert distill_fit(["--checkpoint", checkpoint, "--images", "6", "--backbone", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train"] == report["train"]
    again = ["distill", "--data", str(folder), "--teacher", str(TEACHER), "--init", str(moved), "--epochs", "1",
             "--views", "1", "--batch-size", "8", "--amp", "off",
             "--init-projector", checkpoint]  # a next stage from the exported file, keeping the projector
    fresh_cache = tmp_path / "fresh"  # linear by default: refused before the teacher fills a fresh view cache
    wrong = CliRunner().invoke(app, [*again, "--cache", str(fresh_cache), "--out", str(tmp_path / "t.safetensors")])
    assert wrong.exit_code == 2 and "pass --projector mlp" in wrong.output, wrong.output
    assert not any(fresh_cache.rglob("*.npz")), "the teacher ran before the projector was checked"
    continued = CliRunner().invoke(app, [*again, "--cache", str(tmp_path / "v"), "--projector", "mlp",
                                         "--out", str(tmp_path / "u.safetensors")])
    assert continued.exit_code == 0, continued.output + repr(continued.exception)
    assert f"projector from {checkpoint}" in continued.output
