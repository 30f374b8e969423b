"""dtype and backend auto (issue 22): the choice with fake timings and agreements, and the real measurement with
the candidates forced, since a developer's CPU may lack native bf16 or OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptserve.backbone import random_tiny_backbone
from server import precision
from server.demo import demo_prompt_set
from server.precision import MIN_AGREEMENT, Candidate, candidates, choose

F32, BF16, FP16 = Candidate("float32"), Candidate("bfloat16"), Candidate("float16")
OV32, OV16 = Candidate("float32", "openvino"), Candidate("bfloat16", "openvino")


def fake(speed: dict[Candidate, float], agree: dict[Candidate, float]):
    asked: list[Candidate] = []

    def agreement(option: Candidate) -> float:
        asked.append(option)
        return agree[option]

    return (lambda options: {o: speed[o] for o in options}), agreement, asked


def test_a_faster_precision_that_agrees_is_kept():
    speedups, agreement, _ = fake({BF16: 2.6}, {BF16: 0.995})
    choice = choose([F32, BF16], speedups, agreement, probe_images=256)
    assert choice.dtype == "bfloat16"
    kept = [t for t in choice.trials if t.kept]
    assert [t.dtype for t in kept] == ["bfloat16"] and kept[0].speedup == 2.6 and kept[0].agreement == 0.995


def test_disagreement_keeps_float32():
    speedups, agreement, _ = fake({BF16: 2.6}, {BF16: MIN_AGREEMENT - 0.01})
    choice = choose([F32, BF16], speedups, agreement, probe_images=256)
    assert choice.dtype == "float32" and "agreement" in choice.trials[1].why and not choice.trials[1].kept


def test_never_slower_than_float32_and_agreement_is_not_even_measured_then():
    speedups, agreement, asked = fake({BF16: 0.13}, {BF16: 1.0})  # bf16 on an AVX2-only CPU
    choice = choose([F32, BF16], speedups, agreement, probe_images=256)
    assert choice.dtype == "float32" and "not faster" in choice.trials[1].why and asked == []
    speedups, agreement, _ = fake({BF16: 1.03}, {BF16: 1.0})  # within timing noise
    assert choose([F32, BF16], speedups, agreement, 256).dtype == "float32"


def test_the_fastest_of_several_that_agree():
    speedups, agreement, _ = fake({BF16: 1.8, FP16: 2.1}, {BF16: 0.999, FP16: 0.994})
    choice = choose([F32, BF16, FP16], speedups, agreement, probe_images=256)
    assert choice.dtype == "float16"
    assert "float16 is faster" in next(t for t in choice.trials if t.dtype == "bfloat16").why


def test_nothing_to_try_or_nothing_to_check_against_keeps_float32():
    speedups, agreement, asked = fake({}, {})
    alone = choose([F32], speedups, agreement, probe_images=256)
    assert alone.dtype == "float32" and "natively" in alone.trials[0].why
    blind = choose([F32, BF16], speedups, agreement, probe_images=0)
    assert blind.dtype == "float32" and "probe" in blind.trials[0].why and asked == []


def test_the_real_measurement_with_bf16_forced(monkeypatch):
    """On whatever CPU runs the tests: bf16 is timed and checked for real; the choice follows the measurements."""
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32", "bfloat16"])
    backbone = random_tiny_backbone()
    tasks = {f"t{i}": demo_prompt_set(backbone, [f"c{j}" for j in range(5)], 2, 2, seed=i) for i in range(3)}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    choice = precision.decide_dtype(backbone, torch.device("cpu"), tasks, images, budget_s=0.5, batch=16,
                                    backend="torch")
    (bf16,) = [t for t in choice.trials if t.dtype == "bfloat16"]
    assert bf16.speedup is not None and bf16.speedup > 0
    assert choice.dtype == ("bfloat16" if bf16.kept else "float32")
    if bf16.agreement is not None:
        assert 0 <= bf16.agreement <= 1
    assert next(backbone.model.parameters()).dtype == torch.float32  # the trial cast copies, not the backbone


def test_a_faster_backend_that_agrees_is_kept_and_the_fastest_pair_wins():
    speedups, agreement, asked = fake({BF16: 1.8, OV32: 2.5, OV16: 3.1}, {BF16: 0.995, OV32: 1.0, OV16: 0.97})
    choice = choose([F32, BF16, OV32, OV16], speedups, agreement, probe_images=256)
    assert (choice.dtype, choice.backend) == ("float32", "openvino")
    assert asked == [BF16, OV32, OV16]  # every pair faster than float32 torch is checked against it
    trials = {(t.dtype, t.backend): t for t in choice.trials}
    assert "agreement" in trials["bfloat16", "openvino"].why and not trials["bfloat16", "openvino"].kept
    assert "float32 on openvino is faster" in trials["bfloat16", "torch"].why
    assert "float32 on openvino is 2.50x faster" in trials["float32", "torch"].why


def test_a_set_dtype_or_backend_is_the_fallback_others_must_beat():
    speedups, agreement, asked = fake({BF16: 1.5, OV16: 1.55}, {OV16: 1.0})  # dtype bfloat16, backend auto
    choice = choose([BF16, OV16], speedups, agreement, probe_images=256)
    assert (choice.dtype, choice.backend) == ("bfloat16", "torch") and asked == []
    assert choice.trials[0].speedup == 1.5 and "needs >= 1.58" in choice.trials[1].why
    speedups, agreement, _ = fake({BF16: 1.5, OV16: 2.0}, {OV16: 0.995})
    assert choose([BF16, OV16], speedups, agreement, probe_images=256).backend == "openvino"
    speedups, agreement, _ = fake({OV32: 0.9, OV16: 1.2}, {OV16: 0.5})  # backend openvino, dtype auto
    choice = choose([OV32, OV16], speedups, agreement, probe_images=256)
    assert (choice.dtype, choice.backend) == ("float32", "openvino") and choice.trials[0].why.startswith("nothing")


@pytest.mark.parametrize(("dtype", "backend", "expected"), [
    ("auto", "auto", [F32, BF16, OV32, OV16]),
    ("float32", "auto", [F32, OV32]),
    ("bfloat16", "auto", [BF16, OV16]),
    ("auto", "openvino", [OV32, OV16]),
    ("auto", "torch", [F32, BF16]),
])
def test_the_candidates_of_each_setting_fallback_first(monkeypatch, dtype, backend, expected):
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32", "bfloat16"])
    monkeypatch.setattr(precision, "backends_for", lambda device: ["torch", "openvino"])
    assert candidates(torch.device("cpu"), dtype, backend) == expected


def test_the_real_measurement_with_openvino(monkeypatch):
    """OpenVINO float32 timed and checked against float32 torch for real; it agrees whenever it is compared."""
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    monkeypatch.setattr(precision, "native_dtypes", lambda device: ["float32"])
    backbone = random_tiny_backbone()
    tasks = {f"t{i}": demo_prompt_set(backbone, [f"c{j}" for j in range(4 + i)], 1 + i, 2, seed=i) for i in range(3)}
    images = np.random.default_rng(1).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    choice = precision.decide_dtype(backbone, torch.device("cpu"), tasks, images, budget_s=0.5, batch=16)
    reference, openvino = choice.trials
    assert (reference.dtype, reference.backend, openvino.dtype, openvino.backend) == (
        "float32", "torch", "float32", "openvino")
    assert openvino.speedup is not None and openvino.speedup > 0
    assert openvino.agreement in (None, 1.0)  # measured only when faster; then float32 answers as float32 does
    assert choice.backend == ("openvino" if openvino.kept else "torch") == choice.as_dict()["backend"]


@pytest.mark.parametrize("folder_files", [0, 3])
def test_probe_images_from_a_folder(tmp_path, folder_files):
    from PIL import Image

    for i in range(folder_files):
        Image.new("RGB", (50, 40), (i * 40, 10, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = precision.probe_images(tmp_path, 32, "bicubic")
    assert images.shape == (folder_files, 32, 32, 3) and images.dtype == np.uint8
