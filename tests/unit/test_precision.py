"""dtype auto (issue 22): the choice with fake timings and agreements, and the real measurement with the
candidates forced, since a developer's CPU may lack native bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptserve.backbone import random_tiny_backbone
from server import precision
from server.demo import demo_prompt_set
from server.precision import MIN_AGREEMENT, choose


def fake(speed: dict[str, float], agree: dict[str, float]):
    asked: list[str] = []

    def agreement(name: str) -> float:
        asked.append(name)
        return agree[name]

    return (lambda names: {n: speed[n] for n in names}), agreement, asked


def test_a_faster_precision_that_agrees_is_kept():
    speedups, agreement, _ = fake({"bfloat16": 2.6}, {"bfloat16": 0.995})
    choice = choose(["float32", "bfloat16"], speedups, agreement, probe_images=256)
    assert choice.dtype == "bfloat16"
    kept = [t for t in choice.trials if t.kept]
    assert [t.dtype for t in kept] == ["bfloat16"] and kept[0].speedup == 2.6 and kept[0].agreement == 0.995


def test_disagreement_keeps_float32():
    speedups, agreement, _ = fake({"bfloat16": 2.6}, {"bfloat16": MIN_AGREEMENT - 0.01})
    choice = choose(["float32", "bfloat16"], speedups, agreement, probe_images=256)
    assert choice.dtype == "float32" and "agreement" in choice.trials[1].why and not choice.trials[1].kept


def test_never_slower_than_float32_and_agreement_is_not_even_measured_then():
    speedups, agreement, asked = fake({"bfloat16": 0.13}, {"bfloat16": 1.0})  # bf16 on an AVX2-only CPU
    choice = choose(["float32", "bfloat16"], speedups, agreement, probe_images=256)
    assert choice.dtype == "float32" and "not faster" in choice.trials[1].why and asked == []
    speedups, agreement, _ = fake({"bfloat16": 1.03}, {"bfloat16": 1.0})  # within timing noise
    assert choose(["float32", "bfloat16"], speedups, agreement, 256).dtype == "float32"


def test_the_fastest_of_several_that_agree():
    speedups, agreement, _ = fake({"bfloat16": 1.8, "float16": 2.1}, {"bfloat16": 0.999, "float16": 0.994})
    choice = choose(["float32", "bfloat16", "float16"], speedups, agreement, probe_images=256)
    assert choice.dtype == "float16"
    assert "float16 is faster" in next(t for t in choice.trials if t.dtype == "bfloat16").why


def test_nothing_to_try_or_nothing_to_check_against_keeps_float32():
    speedups, agreement, asked = fake({}, {})
    alone = choose(["float32"], speedups, agreement, probe_images=256)
    assert alone.dtype == "float32" and "natively" in alone.trials[0].why
    blind = choose(["float32", "bfloat16"], speedups, agreement, probe_images=0)
    assert blind.dtype == "float32" and "probe" in blind.trials[0].why and asked == []


def test_the_real_measurement_with_bf16_forced(monkeypatch):
    """On whatever CPU runs the tests: bf16 is timed and checked for real; the choice follows the measurements."""
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32", "bfloat16"])
    backbone = random_tiny_backbone()
    tasks = {f"t{i}": demo_prompt_set(backbone, [f"c{j}" for j in range(5)], 2, 2, seed=i) for i in range(3)}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    choice = precision.decide_dtype(backbone, torch.device("cpu"), tasks, images, budget_s=0.5, batch=16)
    (bf16,) = [t for t in choice.trials if t.dtype == "bfloat16"]
    assert bf16.speedup is not None and bf16.speedup > 0
    assert choice.dtype == ("bfloat16" if bf16.kept else "float32")
    if bf16.agreement is not None:
        assert 0 <= bf16.agreement <= 1
    assert next(backbone.model.parameters()).dtype == torch.float32  # the trial cast copies, not the backbone


@pytest.mark.parametrize("folder_files", [0, 3])
def test_probe_images_from_a_folder(tmp_path, folder_files):
    from PIL import Image

    for i in range(folder_files):
        Image.new("RGB", (50, 40), (i * 40, 10, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = precision.probe_images(tmp_path, 32, "bicubic")
    assert images.shape == (folder_files, 32, 32, 3) and images.dtype == np.uint8
