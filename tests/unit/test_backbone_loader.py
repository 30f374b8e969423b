"""The one backbone loader (promptserve.load_backbone): its rules, the spec artifacts record, and the errors
that say what to do (the commands' one-line refusal is tests/integration/test_cli_processes.py). Offline: every
timm model here is built locally and saved to a temp file."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import promptserve as ps
from promptserve.backbone import (
    RANDOM_TINY_KWARGS,
    BackboneSpec,
    RandomWeightsWarning,
    load_recorded_backbone,
    resolve_backbone,
)
from promptserve.testing import random_prompt_set
from server.settings import DEMO_BACKBONE

NAME = "vit_tiny_patch16_224"
KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=5)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """A timm ViT and its state dict as a user copies it from a model zoo: .safetensors, .pth, and a .pth
    training checkpoint that nests the weights under "state_dict"."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(7)
    model = timm.create_model(NAME, **KWARGS)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "model.safetensors"))
    torch.save(state, root / "model.pth")
    torch.save({"state_dict": state, "epoch": 3}, root / "checkpoint.pth")
    return {"model": model, "root": root, "fingerprint": ps.Backbone(model, NAME, KWARGS).fingerprint}


@pytest.mark.parametrize("file", ["model.safetensors", "model.pth", "checkpoint.pth"])
def test_weights_files_load_through_timm_with_the_same_fingerprint(zoo, file):
    path = zoo["root"] / file
    bb = ps.load_backbone(NAME, weights=path, timm_kwargs=KWARGS)
    assert bb.fingerprint == zoo["fingerprint"]
    assert ps.Backbone.from_timm(NAME, weights=path, **KWARGS).fingerprint == zoo["fingerprint"]
    assert json.loads(bb.spec) == {"name": NAME, "source": "weights-file", "path": str(path), "timm_kwargs": KWARGS}
    for key, tensor in bb.model.state_dict().items():  # the weights really are the file's, not a fresh init
        assert torch.equal(tensor, zoo["model"].state_dict()[key]), key


def test_other_weights_give_another_fingerprint_and_a_tag_does_not_change_it(zoo, tmp_path):
    torch.manual_seed(8)
    other = tmp_path / "other.safetensors"
    save_file(timm.create_model(NAME, **KWARGS).state_dict(), str(other))
    assert ps.load_backbone(NAME, weights=other, timm_kwargs=KWARGS).fingerprint != zoo["fingerprint"]
    # the fingerprint hashes the architecture, not the pretrained tag: the same weights match however named
    tagged = ps.load_backbone(f"{NAME}.augreg_in21k_ft_in1k", weights=zoo["root"] / "model.pth", timm_kwargs=KWARGS)
    assert tagged.fingerprint == zoo["fingerprint"] and tagged.name == f"{NAME}.augreg_in21k_ft_in1k"


def test_a_timm_name_without_weights_is_refused_naming_both_flags():
    with pytest.raises(ps.BackboneError, match="--pretrained.*--weights"):
        ps.load_backbone(NAME)
    with pytest.raises(ps.BackboneError, match="alternatives"):
        resolve_backbone(NAME, pretrained=True, weights="x.pth")
    with pytest.raises(ps.BackboneError, match="close: vit_tiny_patch16_224"):
        resolve_backbone("vit_tny_patch16_224", pretrained=True)


def test_random_init_warns_and_is_seeded_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        a = ps.load_backbone(NAME, random_init=True, timm_kwargs=KWARGS)
    assert torch.equal(torch.rand(3), expected)
    with pytest.warns(RandomWeightsWarning):
        assert ps.load_backbone(NAME, random_init=True, timm_kwargs=KWARGS).fingerprint == a.fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # random-tiny is asked for by name: no warning
        tiny = ps.load_backbone("random-tiny")
    assert tiny.timm_kwargs == RANDOM_TINY_KWARGS
    with pytest.raises(ps.BackboneError, match="drop --weights"):
        resolve_backbone("random-tiny", weights="x.pth")


def test_project_file_rules_and_messages(zoo, tmp_path):
    project = tmp_path / "demo.safetensors"
    save_file(zoo["model"].state_dict(), str(project), metadata={"timm_name": NAME, "timm_kwargs": json.dumps(KWARGS)})
    bb = ps.load_backbone(str(project))
    assert bb.fingerprint == zoo["fingerprint"]
    assert bb.source == BackboneSpec(NAME, "project-file", str(project), KWARGS)
    with pytest.raises(ps.BackboneError, match="names its own model and weights: drop --pretrained"):
        resolve_backbone(str(project), pretrained=True)
    # a model-zoo file passed as --backbone: say to pass the timm name and the file as --weights
    with pytest.raises(ps.BackboneError, match="timm model name as --backbone and this file as --weights"):
        ps.load_backbone(str(zoo["root"] / "model.safetensors"))
    with pytest.raises(ps.BackboneError, match="does not exist.*promptserve pretrain") as missing:
        ps.load_backbone(str(tmp_path / "missing.safetensors"))
    assert "make pretrain" not in str(missing.value)  # no such target: never recommend it


def test_weights_that_do_not_fit_the_model_are_one_clear_error(zoo):
    with pytest.raises(ps.BackboneError, match=r"could not load .*model\.pth into timm model .*size mismatch"):
        ps.load_backbone(NAME, weights=zoo["root"] / "model.pth", timm_kwargs={**KWARGS, "num_classes": 7})
    with pytest.raises(ps.BackboneError, match="does not exist"):
        ps.load_backbone(NAME, weights=zoo["root"] / "nope.pth")


def test_a_recorded_spec_rebuilds_the_backbone_and_checks_its_fingerprint(zoo, tmp_path):
    path = zoo["root"] / "model.safetensors"
    bb = ps.load_backbone(NAME, weights=path, timm_kwargs=KWARGS)
    assert load_recorded_backbone(bb.spec, bb.fingerprint).fingerprint == bb.fingerprint
    with pytest.raises(ps.BackboneError, match=r"now has .*pass --backbone vit_tiny_patch16_224 --weights"):
        load_recorded_backbone(bb.spec, "0" * 64, "set.safetensors")
    moved = BackboneSpec(NAME, "weights-file", str(tmp_path / "gone.safetensors"), KWARGS).to_json()
    with pytest.raises(ps.BackboneError, match="which is not here: pass --backbone"):
        load_recorded_backbone(moved, bb.fingerprint, "set.safetensors")
    no_source = json.dumps({"name": NAME, **KWARGS})  # what the weights were is not said: nothing to rebuild
    with pytest.raises(ps.BackboneError, match="needs a timm name and a source"):
        load_recorded_backbone(no_source, bb.fingerprint, "old.safetensors")


def test_a_set_pinned_to_a_retired_backbone_finds_it_under_retired(zoo, tmp_path):
    """A replaced demo backbone moves to backbones/retired/: the prompt sets that record its old path still
    rebuild it without flags, and the fingerprint still decides."""
    bb = ps.load_backbone(NAME, weights=zoo["root"] / "model.safetensors", timm_kwargs=KWARGS)
    (tmp_path / "retired").mkdir()
    shutil.copy(zoo["root"] / "model.safetensors", tmp_path / "retired" / "old.safetensors")
    recorded = BackboneSpec(NAME, "weights-file", str(tmp_path / "old.safetensors"), KWARGS).to_json()
    rebuilt = load_recorded_backbone(recorded, bb.fingerprint, "set.safetensors")
    assert rebuilt.fingerprint == bb.fingerprint and rebuilt.source.path.endswith("retired/old.safetensors")
    with pytest.raises(ps.BackboneError, match="now has"):  # other weights under the same name are refused
        load_recorded_backbone(recorded, "0" * 64, "set.safetensors")


def test_a_fingerprint_mismatch_names_the_backbone_the_set_was_trained_on(zoo):
    trained_on = ps.load_backbone(NAME, weights=zoo["root"] / "model.pth", timm_kwargs=KWARGS)
    prompt_set = random_prompt_set(trained_on, visual=1, kv=1)
    named = r"trained on backbone \w+ \(vit_tiny_patch16_224 .* with weights .*model\.pth\)"
    with pytest.raises(ps.FingerprintError, match=named):
        prompt_set.validate(ps.load_backbone("random-tiny"))


def test_serve_settings_keep_their_env_names(monkeypatch, zoo):
    from server.backbone_setup import backbone_spec
    from server.settings import ServerSettings

    monkeypatch.setenv("PROMPTSERVE_BACKBONE", NAME)
    monkeypatch.setenv("PROMPTSERVE_BACKBONE_WEIGHTS", str(zoo["root"] / "model.pth"))
    monkeypatch.setenv("PROMPTSERVE_BACKBONE_KWARGS", json.dumps(KWARGS))
    spec = backbone_spec(ServerSettings())
    assert spec == BackboneSpec(NAME, "weights-file", str(zoo["root"] / "model.pth"), KWARGS)
    monkeypatch.delenv("PROMPTSERVE_BACKBONE_WEIGHTS")
    with pytest.raises(ps.BackboneError, match="--pretrained.*--weights"):
        backbone_spec(ServerSettings())


def test_a_backbone_is_named_for_people_by_its_file(tmp_path):
    """Issue 24 item 9: /readyz and the log called the 32-px, patch-4, 6-layer demo file `vit_tiny_patch16_224`."""
    demo = Path(DEMO_BACKBONE)
    if demo.is_file():
        assert ps.Backbone.from_file(demo).display_name == (
            f"{demo.stem} (vit_tiny_patch16_224, img_size 32, patch_size 4, depth 6)")
    assert ps.load_backbone("random-tiny").display_name.startswith("random-tiny (vit_tiny_patch16_224, img_size 32")


def test_pretrained_weights_offline_fail_in_seconds_with_what_to_do(monkeypatch):
    """Issue 24 item 10: offline, `info --pretrained` spent 55 s in the hub client's retries."""
    import socket
    import time

    from promptserve import backbone

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(ps.BackboneError, match="cannot be reached.*--weights FILE"):
        ps.load_backbone(NAME, pretrained=True)
    assert time.monotonic() - start < backbone.HUB_PROBE_S + 1
