"""Training runs of the trainer (`train_task`) on tiny random ViTs and synthetic ImageFolders, and one on a real
dataset subset: what a run writes is what is served, prompt methods leave the backbone untouched, seeds repeat,
the hp search and the seeds report what they chose. Seconds each on a 2-core CPU; the pure parts of the trainer
(data, config, pruning) are tests/unit/test_training.py, whose helpers these share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from promptserve.model import PromptedViT
from promptserve.preprocess import normalise
from promptserve.promptset import PromptSet
from promptserve.testing import tiny_backbone
from tests.unit.test_training import QUIET, SMALL, cfg, isolated_cache, make_folder  # noqa: F401 (a fixture)
from training.loop import PromptForward
from training.trainer import train_task

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


def test_hard_pruned_artifact_serves_the_rewound_logits(tmp_path):
    """Invariant 5: the pruned prompt set served by PromptedViT == the rewound model, 1e-5."""
    bb = tiny_backbone(**SMALL)
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="e2vpt", token_prune=0.5, segment_prune=0.25), str(root), bb, **QUIET)
    rewound = out["result"].params
    ps = PromptSet.load(out["artifact"])
    assert ps.visual(0).shape[0] == 2 and ps.metrics["tokens_pruned_fraction"] == 0.5
    x = normalise(np.random.default_rng(1).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), bb.data_config)
    with torch.no_grad():
        expected = PromptForward(bb, rewound)(x)
    served = PromptedViT(bb)
    served.add_task("t", ps)
    got = served(x, ["t"] * 6)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["linear", "vpt-deep", "vpt-shallow"])
def test_prompt_methods_leave_the_backbone_bit_exact(tmp_path, method):
    bb = tiny_backbone(**SMALL)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method=method), str(root), bb, **QUIET)
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ps = PromptSet.load(out["artifact"])
    assert ps.method == method and (ps.num_prompt_params() == 0) == (method == "linear")
    assert out["report"]["metrics"]["tuned_params"] == ps.num_params()


def test_repeated_seeded_run_gives_the_same_artifact(tmp_path):
    bb = tiny_backbone(**SMALL)
    root = make_folder(tmp_path / "ds")
    a = PromptSet.load(train_task(cfg(method="e2vpt", search=True), str(root), bb, **QUIET)["artifact"])
    b = PromptSet.load(train_task(cfg(method="e2vpt", search=True), str(root), bb, **QUIET)["artifact"])
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.config == b.config
    c = PromptSet.load(train_task(cfg(method="e2vpt", seed=1), str(root), bb, **QUIET)["artifact"])
    assert not torch.equal(a.tensors["head.weight"], c.tensors["head.weight"])


def test_loss_falls_on_a_real_subset():
    tar = SHARED / "sign_digits.tar"
    if not tar.exists():
        pytest.skip(f"{SHARED} is absent (real datasets live in ../shared/datasets beside the repo)")
    bb = tiny_backbone(**{**SMALL, "num_classes": 10})
    # a random tiny ViT gives weak features, so the head (trained on cached features) carries the fall
    out = train_task(cfg(method="linear", epochs=15, train_size=200, val_fraction=0, optimizer="adamw", lr=1.0),
                     str(tar), bb, **QUIET)
    losses = [h["train_loss"] for h in out["report"]["history"]]
    assert losses[-1] < 0.9 * losses[0], losses


def test_hp_search_picks_the_best_val_point_then_trains_on_train_plus_val(tmp_path):
    bb = tiny_backbone(**SMALL)
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="vpt-deep", hp_search=True, lr_grid=[0.001, 0.16], wd_grid=[0.0, 0.01],
                         hp_epochs=1), str(root), bb, **QUIET)
    rep = out["report"]
    rows = rep["hp_search"]["grid"]
    assert [(r["lr"], r["weight_decay"]) for r in rows] == [(0.001, 0.0), (0.001, 0.01), (0.16, 0.0), (0.16, 0.01)]
    best = max(rows, key=lambda r: r["val_acc"])
    assert (rep["config"]["lr"], rep["config"]["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert rep["metrics"]["train_images"] == 60 and rep["seeds"]["final_data"] == "train + val"
    assert rep["hp_search"]["binomial_sd"] > 0 and rep["metrics"]["val_acc"] is None


def test_seeds_report_mean_sd_and_save_the_best_on_validation(tmp_path):
    bb = tiny_backbone(**SMALL)
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="vpt-deep", seeds=3, epochs=1), str(root), bb, **QUIET)
    seeds = out["report"]["seeds"]
    runs = seeds["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and seeds["final_data"] == "train"  # val kept out
    assert seeds["saved_seed"] == max(runs, key=lambda r: r["val_acc"])["seed"]
    tests = [r["test_acc"] for r in runs]
    assert seeds["test_acc_mean"] == pytest.approx(np.mean(tests))
    assert seeds["test_acc_sd"] == pytest.approx(np.std(tests, ddof=1))
    ps = PromptSet.load(out["artifact"])
    assert ps.config.extra["train"]["seed"] == seeds["saved_seed"]
    saved = next(r for r in runs if r["seed"] == seeds["saved_seed"])
    assert ps.metrics["test_acc"] == saved["test_acc"] and ps.metrics["val_acc"] == saved["val_acc"]


@pytest.mark.parametrize("rule", ["global", "per-token"])
def test_trained_e2vpt_sets_have_no_all_zero_token(tmp_path, rule):
    bb = tiny_backbone(**SMALL)
    root = make_folder(tmp_path / "ds")
    out = train_task(cfg(method="e2vpt", epochs=1, token_prune=0.25, segment_prune=0.75, segment_rule=rule,
                         importance="signed"), str(root), bb, **QUIET)
    ps = PromptSet.load(out["artifact"])
    for i in range(bb.num_layers):
        v = ps.visual(i)
        if v is not None:
            assert bool(v.abs().sum(dim=1).gt(0).all()), (rule, i)
    assert out["report"]["importance"]["rule"] == "signed"
    assert "segments_kept" in out["report"]["pruning"]
