"""The accuracy figures docs/results*.md and the README quote are the committed sweep reports', as
training/experiments/results_doc.py makes them (`python -m training.experiments.results_doc` rewrites them); the
test fails while a doc and the reports disagree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.settings import DEMO_BACKBONE_FILE
from training.experiments import reports, results_doc
from training.experiments.sweep import DEFAULT_OUT

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / DEFAULT_OUT  # the demo backbone's sweep: docs/results.md, the demo tasks


@pytest.mark.parametrize("name", results_doc.DOCS)
def test_the_docs_quote_the_committed_sweeps(name):
    text = (REPO / name).read_text()
    assert "<!-- results: " in text, f"{name} lost its generated parts"
    assert results_doc.rendered(text) == text, f"{name} differs from the sweeps' reports: " \
                                               "python -m training.experiments.results_doc"


def test_the_demo_tasks_are_the_e2vpt_runs_of_the_sweep_the_docs_quote():
    for task in ("gtsrb", "dtd10", "sign-digits", "fashion-mnist"):
        shipped = (REPO / "assets" / "tasks" / f"{task}.safetensors").read_bytes()
        assert shipped == (SWEEP / task / "e2vpt.safetensors").read_bytes(), task


def test_one_demo_backbone_everywhere():
    """The server's demo backbone is the one `make serve` names, the one run_all.sh sweeps by default, and the one
    the default sweep's reports trained on: switching the demo backbone is one change in each, caught here."""
    demo = f"assets/{DEMO_BACKBONE_FILE}"
    assert f"BACKBONE    ?= {demo}\n" in (REPO / "Makefile").read_text()
    run_all = (REPO / "training" / "experiments" / "run_all.sh").read_text()
    assert f"BACKBONE=${{BACKBONE:-{demo}}}\n" in run_all and f"OUT=${{OUT:-{DEFAULT_OUT}}}\n" in run_all
    from promptserve.backbone import Backbone

    report = json.loads((SWEEP / "gtsrb" / "e2vpt.report.json").read_text())
    assert report["backbone_fingerprint"] == Backbone.from_file(REPO / demo).fingerprint, report["backbone"]


def test_a_changed_report_changes_the_figures(tmp_path):
    """The check can fail: one report's test accuracy moved by a point moves the quoted means and goals."""
    root = tmp_path / "sweep"
    shutil.copytree(SWEEP, root, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    doc = "<!-- results: sweep means -->\n<!-- end results: sweep means -->"
    before = results_doc.rendered(doc, tmp_path)
    report = root / "gtsrb" / "e2vpt.report.json"
    data = json.loads(report.read_text())
    data["metrics"]["test_acc_mean"] += 0.04
    report.write_text(json.dumps(data))
    after = results_doc.rendered(doc, tmp_path)
    assert "e2vpt" in before and before != after
    assert results_doc.rendered(before, tmp_path) == after  # rewriting a stale doc gives the new figures
    with pytest.raises(LookupError, match="unknown generated part"):
        results_doc.rendered("<!-- results: sweep nope --><!-- end results: sweep nope -->", tmp_path)


def test_a_grid_check_that_picks_another_rate_says_so(tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(SWEEP, root, ignore=shutil.ignore_patterns("*.safetensors", "*.png"))
    sweep_pick = json.loads((root / "dtd10" / "e2vpt.report.json").read_text())["hp_search"]
    grid = [{"lr": lr, "weight_decay": 0.01, "val_acc": acc} for lr, acc in ((0.0025, 0.3), (0.01, 0.55), (0.04, 0.5))]
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "dtd10-e2vpt.report.json").write_text(json.dumps({"hp_search": {
        "grid": grid, "chosen": {"lr": 0.01, "weight_decay": 0.01}, "best_val_acc": 0.55}}))
    table = results_doc.rendered("<!-- results: sweep gridcheck:check --><!-- end results: sweep gridcheck:check -->",
                                 tmp_path)
    assert (f"| dtd10 | e2vpt | {sweep_pick['chosen']['lr']:g} ({100 * sweep_pick['best_val_acc']:.1f}) | "
            "0.0025, 0.01, 0.04 | 0.01 (55.0) | **no** |") in table
    assert "test at the check's pick" not in table  # no rerun at a new pick: no test column

    (tmp_path / "check" / "final").mkdir()  # the sweep's protocol rerun at the check's pick: its test figure
    (tmp_path / "check" / "final" / "dtd10-e2vpt.report.json").write_text(json.dumps({"metrics": {
        "test_acc": 0.5, "test_acc_mean": 0.512, "test_acc_sd": 0.004}, "seeds": {"runs": [{}, {}, {}]}}))
    table = results_doc.rendered("<!-- results: sweep gridcheck:check --><!-- end results: sweep gridcheck:check -->",
                                 tmp_path)
    sweep_test = results_doc.Score.of(json.loads((root / "dtd10" / "e2vpt.report.json").read_text()))
    assert f"| **no** | 51.2 +- 0.4 ({sweep_test}) |" in table and "same pick | test at the check's pick" in table


def test_the_backbones_table_sets_each_sweep_beside_its_probe_and_fits_the_gap(tmp_path, monkeypatch):
    """Three made-up backbones whose probe rises 5 points each: full gains 1 point per probe point and e2vpt 2, so
    the e2vpt - full slope is +1; a fourth sweep after ROOT is left out."""
    sweeps = []
    for i, probe in enumerate((40.0, 45.0, 50.0)):
        root = tmp_path / f"sweep{i}"
        for k, task in enumerate(("gtsrb", "dtd10", "sign-digits", "fashion-mnist")):
            (root / task).mkdir(parents=True)
            # task k's e2vpt - full gap has slope k - 0.5 per probe point; over the four tasks they average 1.0
            for method, acc in (("linear", 50 + i), ("e2vpt", 50 + 10 * i + (k - 1.5) * 5 * i), ("full", 70 + 5 * i)):
                (root / task / f"{method}.report.json").write_text(json.dumps(
                    {"metrics": {"test_acc": acc / 100}}))
        tasks = [{"task": t, "accuracy": probe / 100} for t in ("gtsrb", "dtd10", "sign_digits")]
        (tmp_path / f"probe{i}.json").write_text(json.dumps({"tasks": [*tasks, {"task": "fashion-mnist",
                                                                                "accuracy": 0.0}]}))
        sweeps.append((f"b{i}", f"sweep{i}", f"probe{i}.json"))
    (tmp_path / "teacher.json").write_text(json.dumps({"tasks": tasks}))
    monkeypatch.setattr(reports, "BACKBONE_SWEEPS", (*sweeps, ("later", "sweep9", "probe9.json")))
    monkeypatch.setattr(reports, "BACKBONE_RERUNS", "reruns")
    monkeypatch.setattr(results_doc, "TEACHER_PROBE", "teacher.json")
    doc = "<!-- results: sweep2 backbones -->\n<!-- end results: sweep2 backbones -->"
    table = results_doc.rendered(doc, tmp_path)
    rows = table.splitlines()
    assert len({row.count("|") for row in rows if row.startswith("|")}) == 1  # every row fills every column
    assert "| b0 | 40.0 | 50.0 | 50.0 | 70.0 | -20.0 | -20.0 | -20.0 | -20.0 | -20.0 | by image |" in rows
    assert "| b2 | 50.0 | 52.0 | 70.0 | 80.0 | -10.0 |" in table and "later" not in table
    assert f"| teacher (probe only) | 50.0 | {' | '.join(['-'] * 9)} |" in rows
    assert "linear +0.20, e2vpt +2.00, full +1.00; e2vpt - full +1.00 points per probe point" in table
    assert "| slope per probe point | | +0.20 | +2.00 | +1.00 | +1.00 | -0.50 | +0.50 | +1.50 | +2.50 | |" in rows
    with pytest.raises(LookupError, match="needs a sweep listed in sweep.BACKBONE_SWEEPS"):
        results_doc.rendered("<!-- results: sweep7 backbones --><!-- end results: sweep7 backbones -->", tmp_path)

    # sweep0's gtsrb e2vpt run redone on another split stands in for its own: the row's gtsrb gap and means move
    assert table.count("| by image |") == 3  # the made-up reports have no val_group
    rerun = tmp_path / "reruns" / "sweep0" / "gtsrb"
    rerun.mkdir(parents=True)
    (tmp_path / "reruns" / "sweep1" / "gtsrb").mkdir(parents=True)  # reruns begun, none finished: the sweep's own
    (rerun / "e2vpt.report.json").write_text(json.dumps({"metrics": {"test_acc": 0.62},
                                                         "config": {"val_group": "^(a|b)_"}}))
    table = results_doc.rendered(doc, tmp_path)
    mixed = "linear, full: by image; e2vpt: by group `^(a\\|b)_`"  # only e2vpt was redone: the cell says which is which
    assert f"| b0 | 40.0 | 50.0 | 53.0 | 70.0 | -17.0 | -8.0 | -20.0 | -20.0 | -20.0 | {mixed} |" in table.splitlines()
    assert "| b1 | 45.0 | 51.0 | 60.0 | 75.0 | -15.0 | -22.5 | -17.5 | -12.5 | -7.5 | by image |" in table
    (rerun / "e2vpt.report.json").write_text(json.dumps({"metrics": {"test_acc": 0.62},
                                                         "backbone_fingerprint": "another"}))
    (tmp_path / "sweep0" / "gtsrb" / "full.report.json").write_text(json.dumps(
        {"metrics": {"test_acc": 0.7}, "backbone_fingerprint": "the sweep's"}))
    with pytest.raises(LookupError, match="trained on another backbone than the sweep sweep0"):
        results_doc.rendered(doc, tmp_path)


def test_the_splits_table_sets_runs_held_out_by_group_beside_the_same_runs_held_out_by_image(tmp_path):
    def report(val_group, lr, vals, tests, reused=False):
        return json.dumps({"config": {"val_group": val_group, "lr": lr, "weight_decay": 0.01},
                           "hp_search": None if reused else {"chosen": {"lr": lr, "weight_decay": 0.01}},
                           "seeds": {"runs": [{"val_acc": v, "test_acc": t} for v, t in zip(vals, tests, strict=True)]},
                           "metrics": {"test_acc": tests[0], "test_acc_mean": sum(tests) / 3,
                                       "test_acc_sd": 0.002}})

    for root, group, lr, vals, tests in [("before", None, 0.64, [0.6, 0.62, 0.64], [0.40, 0.40, 0.40]),
                                         ("now", "^([^/]+/\\d+)_", 0.16, [0.44, 0.45, 0.46], [0.43, 0.43, 0.43])]:
        for task in ("gtsrb", "dtd10"):
            (tmp_path / root / task).mkdir(parents=True)
            same = None if task == "dtd10" else group  # dtd10 split alike in both: left out of the table
            (tmp_path / root / task / "e2vpt.report.json").write_text(report(same, lr, vals, tests))
        (tmp_path / root / "gtsrb" / "abl-kv-only.report.json").write_text(report(group, lr, vals, tests, True))
    table = results_doc.rendered("<!-- results: now splits:before -->\n<!-- end results: now splits:before -->",
                                 tmp_path)
    by_track = "by image -> by group `^([^/]+/\\d+)_`"
    assert (f"| gtsrb | e2vpt | {by_track} | 0.64 / 0.01 -> 0.16 / 0.01 | 62.0 -> 45.0 | 40.0 +- 0.2 -> "
            "43.0 +- 0.2 * | +22.0 -> +2.0 |") in table
    assert f"| gtsrb | abl-kv-only | {by_track} | 0.64 / 0.01 (given) -> 0.16 / 0.01 (given) |" in table
    assert "dtd10" not in table


def test_the_partial_table_sets_each_partial_run_between_the_linear_head_and_full(tmp_path):
    """Made-up reports: gtsrb has a partial run (its grid chose its top rate), dtd10 has none and is left out."""
    def write(task, run, acc, tuned, lr_grid=None, chosen=None):
        (tmp_path / "s" / task).mkdir(parents=True, exist_ok=True)
        hp = {"grid": [{"lr": lr} for lr in lr_grid], "chosen": {"lr": chosen}} if lr_grid else None
        (tmp_path / "s" / task / f"{run}.report.json").write_text(json.dumps({
            "metrics": {"test_acc": acc, "tuned_params": tuned}, "hp_search": hp, "config": {"lr": 0.1},
            "seeds": {"runs": [{"test_acc": acc, "val_acc": acc + 0.05}]}}))

    for task in ("gtsrb", "dtd10"):
        write(task, "linear", 0.30, 100, [0.04, 0.16, 0.64], 0.16)
        write(task, "e2vpt", 0.40, 2_000, [0.04, 0.16, 0.64], 0.16)
        write(task, "full", 0.70, 300_000, [0.00025, 0.001, 0.004], 0.004)
    write("gtsrb", "partial-first2", 0.60, 100_000, [0.00025, 0.001, 0.004], 0.004)
    doc = "<!-- results: s partial -->\n<!-- end results: s partial -->"
    table = results_doc.rendered(doc, tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| gtsrb")]
    assert [row.split(" | ")[1] for row in rows] == ["the head (linear)", "prompts and the head (e2vpt)",
                                                     "the first two blocks", "every weight (full)"]
    assert "| gtsrb | the first two blocks | 100,000 | 0.004 (top of its grid) | 65.0 | 60.0 |" in rows
    assert "| gtsrb | prompts and the head (e2vpt) | 2,000 | 0.16 | 45.0 | 40.0 |" in rows
    assert "dtd10" not in table
    # with a grid check of the row: the check's pick, and the sweep's protocol rerun there
    check = tmp_path / "gc"
    (check / "final").mkdir(parents=True)
    (check / "gtsrb-partial-first2.report.json").write_text(json.dumps(
        {"hp_search": {"grid": [{"lr": lr} for lr in (0.004, 0.016, 0.064)], "chosen": {"lr": 0.016}}}))
    (check / "final" / "gtsrb-partial-first2.report.json").write_text(json.dumps(
        {"metrics": {"test_acc": 0.66}, "seeds": {"runs": [{"test_acc": 0.66}]}}))
    doc = "<!-- results: s partial:gc -->\n<!-- end results: s partial:gc -->"
    rows = [line for line in results_doc.rendered(doc, tmp_path).splitlines() if line.startswith("| gtsrb")]
    assert "| gtsrb | the first two blocks | 100,000 | 0.004 (top of its grid) | 65.0 | 60.0 | 0.016 | 66.0 |" in rows
    assert rows[-1].endswith("| 70.0 | - | - |")  # full: not checked in this directory
