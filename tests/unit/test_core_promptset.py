"""The prompt-set file: save/load bit-exactness and every validation error."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import promptserve as ps
from promptserve.promptset import parse_header
from promptserve.testing import random_images, random_prompt_set, tiny_backbone


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def test_save_load_is_bit_exact(bb, tmp_path):
    original = random_prompt_set(bb, visual=[3, 0, 5], kv=[2, 0, 1], seed=3)
    version = original.save(tmp_path / "t.safetensors")
    loaded = ps.PromptSet.load(tmp_path / "t.safetensors")
    assert loaded.version == version == original.version
    assert loaded.to_bytes() == (tmp_path / "t.safetensors").read_bytes()
    assert set(loaded.tensors) == set(original.tensors)
    for name, t in original.tensors.items():
        assert torch.equal(loaded.tensors[name], t) and loaded.tensors[name].dtype == t.dtype
    assert (loaded.labels, loaded.config, loaded.backbone_fingerprint) == (
        original.labels, original.config, original.backbone_fingerprint)
    assert ps.PromptSet.load(loaded.to_bytes()).to_bytes() == loaded.to_bytes()


def test_fp16_and_bf16_sets_load_and_serve(bb):
    for dtype in (torch.float16, torch.bfloat16):
        prompt_set = random_prompt_set(bb, seed=1)
        prompt_set = ps.PromptSet({k: v.to(dtype) for k, v in prompt_set.tensors.items()},
                                  backbone_fingerprint=bb.fingerprint, labels=prompt_set.labels)
        loaded = ps.PromptSet.load(prompt_set.to_bytes())
        model = ps.PromptedViT(bb)
        model.add_task("t", loaded)
        assert torch.isfinite(model(random_images(1), ["t"])[:, :5]).all()


def test_user_written_file_with_save_file(bb, tmp_path):
    """The README's path: a file written with safetensors.torch.save_file serves."""
    w, b = bb.own_head()
    save_file({"head.weight": w, "head.bias": b, "visual.0": torch.zeros(2, bb.embed_dim)}, tmp_path / "a.safetensors",
              metadata={"format": "promptserve/1", "backbone_fingerprint": bb.fingerprint})
    model = ps.PromptedViT(bb)
    model.add_task("a", ps.PromptSet.load(tmp_path / "a.safetensors"))
    assert model(random_images(3), ["a", "a", "a"]).shape == (3, 10)


def _blob(tensors, **meta):
    return st_save(tensors, metadata={"format": "promptserve/1", **meta})


def _bad(bb, mutate):
    good = random_prompt_set(bb, seed=5)
    tensors = dict(good.tensors)
    meta = {k: v for k, v in good.metadata().items()}
    mutate(tensors, meta)
    return st_save(tensors, metadata=meta)


@pytest.mark.parametrize("mutate, error, message", [
    (lambda t, m: m.update(format="other/9"), ps.FormatError, "unknown format 'other/9'"),
    (lambda t, m: t.pop("head.weight"), ps.MissingTensorError, "missing tensor 'head.weight'"),
    (lambda t, m: t.update({"visual.1": torch.zeros(3, 7)}), ps.ShapeError,
     r"'visual.1' has shape \[3, 7\], this backbone needs \[3, 64\]"),
    (lambda t, m: t.update({"kv.0": torch.zeros(2, 3, 5)}), ps.ShapeError, r"'kv.0' has shape \[2, 3, 5\]"),
    (lambda t, m: t.update({"head.bias": torch.zeros(4)}), ps.ShapeError, r"'head.bias' has shape \[4\]"),
    (lambda t, m: m.update(backbone_fingerprint="0" * 64), ps.FingerprintError, "trained on backbone 000000000000"),
    (lambda t, m: m.pop("backbone_fingerprint"), ps.FingerprintError, "'backbone_fingerprint' is missing"),
    (lambda t, m: m.update(labels=json.dumps(["x", "y"])), ps.LabelsError, "2 labels for a head of 5 classes"),
    (lambda t, m: t["visual.0"].__setitem__((0, 0), float("nan")), ps.NonFiniteError, "'visual.0' contains NaN"),
    (lambda t, m: t["head.bias"].__setitem__(0, float("inf")), ps.NonFiniteError, "'head.bias' contains NaN or Inf"),
    (lambda t, m: t.update({"visual.0": t["visual.0"].to(torch.int32)}), ps.DTypeError, "'visual.0' has dtype 'I32'"),
    (lambda t, m: t.update({"visual.0": t["visual.0"].double()}), ps.DTypeError, "'visual.0' has dtype 'F64'"),
    (lambda t, m: t.update({"visual.7": torch.zeros(1, 64)}), ps.ShapeError, "names layer 7, the backbone has layers"),
    (lambda t, m: t.update({"weird": torch.zeros(1)}), ps.FormatError, "unexpected tensor 'weird'"),
    (lambda t, m: (t.update({"key.0": torch.zeros(2, 1, 32)})), ps.FormatError, "both 'kv.0' and 'key.0'"),
    (lambda t, m: (t.pop("kv.0"), t.update({"key.0": torch.zeros(2, 1, 32)})), ps.MissingTensorError,
     "only one of 'key.0' and 'value.0'"),
    (lambda t, m: m.update(config=json.dumps({"deep": False})), ps.ShapeError, "shallow set"),
    (lambda t, m: m.update(labels="not json"), ps.FormatError, "'labels' is not valid JSON"),
    (lambda t, m: m.update(config=json.dumps({"pooling": "avg"})), ps.ShapeError, "pools with 'avg'"),
    (lambda t, m: m.update(config=json.dumps({"visual_tokens": "ten"})), ps.FormatError,
     "metadata 'config': visual_tokens=ten"),
    (lambda t, m: m.update(config=json.dumps({"deep": "yes"})), ps.FormatError, "deep='yes': use true or false"),
    (lambda t, m: m.update(config=json.dumps({"visual_tokens": [9, 9, 9], "num_layers": 3})), ps.FormatError,
     r"says visual_tokens=\[9, 9, 9\], the tensors hold \[3, 3, 3\]"),
])
def test_each_validation_error_is_specific(bb, mutate, error, message):
    blob = _bad(bb, mutate)
    with pytest.raises(error, match=message):
        ps.PromptSet.load(blob).validate(bb)
    model = ps.PromptedViT(bb)
    with pytest.raises(ps.PromptSetError):
        model.add_task("t", ps.PromptSet.load(blob))
    assert model.tasks == []


@pytest.mark.parametrize("blob, message", [
    (b"1234", "fewer than 8 bytes"),
    (struct.pack("<Q", 10**9) + b"{}", "header length"),
    (struct.pack("<Q", 5) + b"nope!", "header is not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_corrupt_headers_are_refused_before_the_body(blob, message):
    with pytest.raises(ps.FormatError, match=message):
        parse_header(blob)


def test_header_offsets_outside_the_body_are_refused():
    header = json.dumps({"__metadata__": {"format": "promptserve/1"},
                         "head.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 400]}}).encode()
    with pytest.raises(ps.FormatError, match="points outside"):
        parse_header(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def test_replacing_with_an_invalid_set_keeps_the_old_one(bb):
    model = ps.PromptedViT(bb)
    good = random_prompt_set(bb, seed=2)
    model.add_task("t", good)
    bad = _bad(bb, lambda t, m: m.update(backbone_fingerprint="f" * 64))
    with pytest.raises(ps.FingerprintError):
        model.add_task("t", ps.PromptSet.load(bad))
    assert model.bank.version("t") == good.version


def test_prompt_config_validation_says_what_to_fix():
    with pytest.raises(ps.ConfigError, match="visual_tokens=-1"):
        ps.PromptConfig(visual_tokens=-1)
    with pytest.raises(ps.ConfigError, match="2 entries for a 3-layer backbone"):
        ps.PromptConfig(kv_tokens=[1, 2], num_layers=3)
    with pytest.raises(ps.ConfigError, match="pooling='max'"):
        ps.PromptConfig(pooling="max")
    with pytest.raises(ps.ConfigError, match="shallow config"):
        ps.PromptConfig(visual_tokens=[1, 2, 3], deep=False)
    cfg = ps.PromptConfig(visual_tokens=[1, 2, 3], kv_tokens=4, num_layers=3)
    assert (cfg.visual_at(2), cfg.kv_at(1)) == (3, 4)
    assert ps.PromptConfig.from_dict(cfg.to_dict()) == cfg


def test_prompt_config_extra_sits_beside_the_fields_in_the_file():
    cfg = ps.PromptConfig(visual_tokens=[1, 2], kv_tokens=0, num_layers=2, extra={"train": {"seed": 3}})
    assert cfg.to_dict()["train"] == {"seed": 3} and "extra" not in cfg.to_dict()
    assert ps.PromptConfig.from_dict(cfg.to_dict()) == cfg
    noted = {**cfg.to_dict(), "generated_by": "x"}  # a key the core does not know travels through the file
    assert ps.PromptConfig.from_dict(noted).to_dict() == noted
    with pytest.raises(ps.ConfigError, match="extra repeats the config fields"):
        ps.PromptConfig(extra={"deep": False})


def test_a_dict_config_is_parsed_into_one_prompt_config(bb):
    prompt_set = random_prompt_set(bb, seed=1)
    assert isinstance(prompt_set.config, ps.PromptConfig)
    loaded = ps.PromptSet.load(prompt_set.to_bytes())
    assert loaded.config == prompt_set.config
    with pytest.raises(ps.FormatError, match="pooling='max'"):
        ps.PromptSet(dict(prompt_set.tensors), config={"pooling": "max"})
    unstated = ps.PromptSet.load(ps.PromptSet(dict(prompt_set.tensors), labels=prompt_set.labels).to_bytes()).config
    assert (unstated.visual_tokens, unstated.kv_tokens, unstated.pooling) == (None, None, None)  # claims nothing


def test_backbone_refuses_non_vit_models():
    import timm

    with pytest.raises(ps.BackboneError, match="not a timm VisionTransformer"):
        ps.Backbone(timm.create_model("resnet18", pretrained=False, num_classes=2), "resnet18")


def test_backbone_fingerprint_tracks_weights_and_data_config(tmp_path):
    a, b = tiny_backbone(seed=0), tiny_backbone(seed=0)
    assert a.fingerprint == b.fingerprint
    assert tiny_backbone(seed=1).fingerprint != a.fingerprint
    assert a.data_config.input_size == 32 and len(a.data_config.mean) == 3
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, tmp_path / "w.safetensors")
    c = ps.Backbone.from_timm("vit_tiny_patch16_224", weights=tmp_path / "w.safetensors",
                              img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=10)
    assert c.fingerprint == a.fingerprint
    assert all(not p.requires_grad for p in c.model.parameters()) and not c.model.training


def test_same_prompt_set_saved_twice_has_one_version(bb):
    """safetensors writes metadata in hash order; the canonical header makes versions reproducible."""
    a, b = random_prompt_set(bb, seed=4), random_prompt_set(bb, seed=4)
    a.created = b.created = "2026-01-01T00:00:00+00:00"
    versions = {a.version, b.version}
    for _ in range(5):
        c = random_prompt_set(bb, seed=4)
        c.created = a.created
        versions.add(c.version)
    assert len(versions) == 1
    assert ps.PromptSet.load(a.to_bytes()).to_bytes() == a.to_bytes()


@pytest.mark.parametrize("mutate, error", [
    (lambda t: t.update({"visual.0": t["visual.0"][0]}), ps.ShapeError),
    (lambda t: t.pop("head.bias"), ps.MissingTensorError),
    (lambda t: t.update({"head.bias": torch.zeros(4)}), ps.ShapeError),
    (lambda t: t.update({"weird": torch.zeros(1)}), ps.FormatError),
    (lambda t: t.update({"head.weight": torch.zeros(0, 64), "head.bias": torch.zeros(0)}), ps.ShapeError),
])
def test_a_set_in_memory_and_its_file_are_refused_alike(bb, mutate, error):
    """One check of names, ranks, the head and the labels: `validate` says what loading the file says."""
    good = random_prompt_set(bb, seed=5)
    tensors = dict(good.tensors)
    mutate(tensors)
    classes = len(tensors.get("head.bias", good.tensors["head.bias"]))  # labels never the fault here
    in_memory = ps.PromptSet(tensors, backbone_fingerprint=bb.fingerprint, labels=[str(i) for i in range(classes)])
    with pytest.raises(error) as from_file:
        ps.PromptSet.load(st_save(tensors, metadata=in_memory.metadata()))
    with pytest.raises(error) as from_memory:
        in_memory.validate(bb)
    assert str(from_memory.value) == str(from_file.value)


def test_a_set_in_memory_with_an_integer_dtype_is_refused(bb):
    good = random_prompt_set(bb, seed=5)
    bad = ps.PromptSet({**good.tensors, "visual.0": good.tensors["visual.0"].int()},
                       backbone_fingerprint=bb.fingerprint, labels=good.labels)
    with pytest.raises(ps.DTypeError, match="'visual.0' has dtype 'torch.int32': use float16"):
        bad.validate(bb)


def test_the_version_is_hashed_once_and_follows_a_changed_field(bb, monkeypatch):
    loaded = ps.PromptSet.load(random_prompt_set(bb, seed=6).to_bytes())
    hashed = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data: hashed.append(len(data)) or real_sha256(data))
    before = loaded.version
    assert loaded.version == before and hashed == []  # kept from the load
    loaded.labels = [f"class {i}" for i in range(loaded.num_classes)]
    after = loaded.version
    assert after != before and after == real_sha256(loaded.to_bytes()).hexdigest()
    assert loaded.version == after and len(hashed) == 1
    assert ps.PromptSet.load(loaded.to_bytes()).labels == loaded.labels
