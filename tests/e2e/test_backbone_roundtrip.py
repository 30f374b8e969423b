"""A user's own timm ViT weights, end to end (no train/serve skew): `train --backbone NAME --weights FILE`, then
`eval` with no --backbone (the artifact records its backbone), then a real `serve` on the same flags: all three
agree on the fingerprint and on the accuracy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from tests.integration.server_utils import AUTH, REPO, ServerProcess

NAME = "vit_tiny_patch16_224"
KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 3}


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    """Three colour classes with noise: learnable in a few epochs by any backbone."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, colour in zip("xyz", ([200, 30, 30], [30, 200, 30], [30, 30, 200]), strict=True):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{j}.png")
    return root


def promptserve(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptserve_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def env(tmp_path):
    import os

    return {**os.environ, "PROMPTSERVE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_train_with_weights_then_eval_and_serve_agree(tmp_path, env):
    data = make_image_folder(tmp_path / "data", {"train": 12, "test": 5})
    torch.manual_seed(0)
    weights = tmp_path / "zoo" / "vit.safetensors"  # as a user copies it from a model zoo: a bare state dict
    weights.parent.mkdir()
    save_file(timm.create_model(NAME, **KWARGS).state_dict(), str(weights))
    out = tmp_path / "runs" / "colours.safetensors"
    flags = ["--backbone", NAME, "--weights", str(weights), "--timm-kwargs", json.dumps(KWARGS)]
    trained = promptserve("train", "--data", str(data), *flags, "--out", str(out), "--epochs", "3",
                          "--no-hp-search", "--no-progress", "--visual-tokens", "2", "--kv-tokens", "2",
                          "--segments", "4", env=env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["backbone"]) == {"name": NAME, "source": "weights-file", "path": str(weights),
                                            "timm_kwargs": KWARGS}
    stored = json.loads(meta["metrics"])["test_acc"]

    # eval: no --backbone, only a test/ folder
    test_only = make_image_folder(tmp_path / "test_only", {"test": 5})
    evaluated = promptserve("eval", "--data", str(test_only), "--task", str(out), env=env)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert f"stored in the artifact at training: {stored:.4f}" in evaluated.stderr  # the human line
    report = json.loads(evaluated.stdout)  # stdout is the JSON alone: `eval ... > result.json` works
    accuracy = report["accuracy"]
    assert report["task"] == out.name.removesuffix(".safetensors") and report["file"] == str(out)
    assert accuracy == pytest.approx(stored)

    # `serve` with the same flags (they come after ServerProcess's own --backbone, so they win)
    server = ServerProcess(tmp_path, str(tmp_path / "registry"), *flags, env=env).start()
    try:
        server.wait_ready()
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["fingerprint"] == meta["backbone_fingerprint"]
        put = httpx.put(f"{server.url}/tasks/colours", content=out.read_bytes(), headers=AUTH, timeout=60)
        assert put.status_code == 200, put.text
        assert put.json()["version"] == hashlib.sha256(out.read_bytes()).hexdigest()
        files = sorted((test_only / "test").glob("*/*.png"))
        answers = httpx.post(f"{server.url}/classify/colours", params={"top_k": 1}, timeout=60,
                             files=[("files", (p.name, p.read_bytes(), "image/png")) for p in files]).json()
        served = np.mean([a["predictions"][0]["label"] == p.parent.name for a, p in zip(answers, files, strict=True)])
        assert served == pytest.approx(accuracy)
    finally:
        server.stop()


def test_eval_of_a_prompt_set_whose_backbone_file_is_gone_says_what_to_pass(tmp_path, env):
    from promptserve.backbone import load_backbone
    from promptserve.testing import random_prompt_set

    weights = tmp_path / "vit.pth"
    torch.manual_seed(1)
    torch.save(timm.create_model(NAME, **KWARGS).state_dict(), weights)
    bb = load_backbone(NAME, weights=weights, timm_kwargs=KWARGS)
    prompt_set = random_prompt_set(bb, visual=1, kv=1, classes=3)
    prompt_set.labels = ["x", "y", "z"]
    prompt_set.save(tmp_path / "set.safetensors")
    weights.unlink()
    data = make_image_folder(tmp_path / "data", {"test": 2})
    result = promptserve("eval", "--data", str(data), "--task", str(tmp_path / "set.safetensors"), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "which is not here: pass --backbone" in result.stderr and len(result.stderr.strip().splitlines()) == 1
