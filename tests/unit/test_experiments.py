"""The results sweep's plan and its summary: seeds become mean +- sd, noise screening, resumable plan, the grid
check, and one definition of the sweep that the runner, the tables and the figures share."""

import argparse
import ast
import json
from pathlib import Path

import pytest

from training import config
from training.experiments import plots, reports, summarize, sweep, vtab

REPO = Path(__file__).resolve().parents[2]


def report(accs: list[float], tuned: int = 1000, **metrics) -> dict:
    mean = sum(accs) / len(accs)
    sd = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    return {"metrics": {"test_acc": accs[0], "test_acc_mean": mean, "test_acc_sd": sd, "tuned_params": tuned,
                        "tuned_percent": tuned / 2.69e4, "total_seconds": 10.0, **metrics},
            "seeds": {"runs": [{"test_acc": a} for a in accs]}, "config": {"epochs": 3},
            "history": [{"stage": "train", "epoch": 1, "train_loss": 2.0}, {"stage": "train", "epoch": 2,
                                                                              "train_loss": 1.5}]}


def test_score_reads_seeds_and_screens_differences_against_their_noise():
    tight_a, tight_b = reports.Score.of(report([0.50, 0.51, 0.52])), reports.Score.of(report([0.40, 0.41, 0.42]))
    noisy = reports.Score.of(report([0.30, 0.50, 0.70]))
    assert tight_a.n == 3 and str(tight_a) == "51.0 +- 1.0"
    assert tight_a.beyond_noise(tight_b) and not tight_a.beyond_noise(noisy)
    single = reports.Score.of(report([0.5]))
    assert str(single) == "50.0" and not single.beyond_noise(tight_b)  # one seed: no claim either way


def test_tables_and_plots_from_a_sweep_directory(tmp_path, capsys):
    runs = {("dtd10", "vpt-deep"): [0.50, 0.51, 0.52], ("dtd10", "linear"): [0.30, 0.31, 0.32],
            ("dtd10", "abl-visual-kv"): [0.45, 0.46, 0.47], ("dtd10", "curve-tp50"): [0.44, 0.45, 0.46],
            ("dtd10", "abl-visual"): [0.40, 0.41, 0.42], ("dtd10", "e2vpt"): [0.45, 0.47, 0.49]}
    for (task, run), accs in runs.items():
        (tmp_path / task).mkdir(exist_ok=True)
        pruned = 0.5 if run.startswith("curve") else 0.0
        r = report(accs, visual_pruned_fraction=pruned)
        r["config"].update(token_prune=pruned, segment_prune=0.0)
        (tmp_path / task / f"{run}.report.json").write_text(json.dumps(r))
    summarize.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| vpt-deep | - | 51.0 +- 1.0 |" in out
    assert "| vpt-deep - linear | - | +20.0 * |" in out
    assert "| dtd10 | 50 | 45.0 +- 1.0 |" in out  # the pruning curve includes the unpruned point
    # ablation rows against the full e2vpt row, screened against the seed noise
    assert "| visual prompts only | 41.0 +- 1.0 | -6.0 * | 1,000 |" in out
    assert "| visual + key-value | 46.0 +- 1.0 | -1.0 | 1,000 |" in out
    assert "| key-value prompts only | (not run) |" in out
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    plots.main([str(tmp_path), str(tmp_path / "plots")])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "accuracy_vs_params.png", "pruning_curve.png", "task_bars.png", "training_curves.png"]  # not a backbone's


def test_the_figure_across_the_backbones_draws_the_tables_numbers_for_the_demo_sweep_only(tmp_path, monkeypatch):
    """The committed sweeps: the figure's points (probe, per-task and mean gaps) are the rows of the docs' table
    across the backbones; plots draws it for the demo backbone's sweep, from any working directory, and not for
    another sweep; reruns half done (e2vpt and full split differently) stop it in one line."""
    from training.experiments import results_doc

    points = reports.backbone_points(sweep.DEFAULT_OUT, sweep.REPO)
    table = results_doc.rendered(f"<!-- results: {sweep.DEFAULT_OUT} backbones --><!-- end results: "
                                 f"{sweep.DEFAULT_OUT} backbones -->").splitlines()
    for p in points:
        [row] = [line for line in table if line.startswith(f"| {p.label} |")]
        cells = row.split(" | ")
        assert (cells[1], cells[5]) == (f"{p.probe:.1f}", f"{p.mean_gap():+.1f}")
        assert cells[6:10] == [f"{p.gap(t):+.1f}" for t in sweep.TASKS]
        assert not p.mixed_splits()  # every gtsrb gap compares runs held out by track
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    monkeypatch.chdir(sweep.REPO / "runs")  # a relative root from another folder
    plots.main([Path(sweep.DEFAULT_OUT).name, str(tmp_path / "demo")])
    assert (tmp_path / "demo" / "gap_vs_probe.png").stat().st_size > 0
    plots.main(["vtab-distill-mlp", str(tmp_path / "earlier")])  # an earlier backbone's page has no such figure
    assert not (tmp_path / "earlier" / "gap_vs_probe.png").exists()
    half = reports.BackbonePoint("half", 50.0, {**points[0].reports, ("gtsrb", "full"): {"config": {}}})
    assert half.mixed_splits() == ["gtsrb"]
    monkeypatch.setattr(plots, "backbone_points", lambda *_: [half, *points[1:]])
    with pytest.raises(SystemExit, match="e2vpt and full held validation out differently on half \\(gtsrb\\)"):
        plots.across_backbones(sweep.REPO / sweep.DEFAULT_OUT)


def test_plan_covers_methods_ablation_and_curve_and_skips_finished_runs(tmp_path, capsys):
    args = ["--backbone", "b.safetensors", "--out", str(tmp_path), "--dry-run"]
    vtab.main(args)
    assert capsys.readouterr().out.startswith("32 runs, 0 already done")
    (tmp_path / "gtsrb").mkdir()
    (tmp_path / "gtsrb" / "e2vpt.safetensors").write_bytes(b"")  # an artifact alone: cut short while writing
    vtab.main([*args, "--ablation-tasks", "--curve-task", ""])
    assert capsys.readouterr().out.startswith("20 runs, 0 already done")
    (tmp_path / "gtsrb" / "e2vpt.report.json").write_text("{}")  # the report is written last: done
    vtab.main([*args, "--ablation-tasks", "--curve-task", ""])
    out = capsys.readouterr().out
    assert out.startswith("20 runs, 1 already done") and "gtsrb e2vpt" not in out
    vtab.main([*args, "--ablation-tasks", "dtd10"])
    assert "  dtd10 abl-visual (lr / weight decay of dtd10 e2vpt)" in capsys.readouterr().out


def test_ablation_runs_reuse_the_lr_and_weight_decay_their_task_s_e2vpt_run_chose(tmp_path):
    args = argparse.Namespace(hp_search=True, hp_epochs=4, out=str(tmp_path))
    own_search = ["--hp-search", "--hp-epochs", "4"]
    assert vtab.hp_args(args, "dtd10", reuse=True) == own_search  # no e2vpt run yet: searches its own
    (tmp_path / "dtd10").mkdir()
    (tmp_path / "dtd10" / "e2vpt.report.json").write_text(json.dumps(
        {"hp_search": {"chosen": {"lr": 0.16, "weight_decay": 0.01}}}))
    assert vtab.hp_args(args, "dtd10", reuse=True) == ["--no-hp-search", "--lr", "0.16", "--weight-decay", "0.01"]
    assert vtab.hp_args(args, "dtd10", reuse=False) == own_search  # main runs always search
    args.hp_search = False
    assert vtab.hp_args(args, "dtd10", reuse=True) == ["--no-hp-search"]


def test_summary_of_an_empty_directory_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no .*report.json under"):
        summarize.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no .*report.json under"):
        plots.main([str(tmp_path), str(tmp_path / "plots")])
    with pytest.raises(SystemExit, match="python -m training.experiments.plots"):  # not tables instead of figures
        summarize.main([str(tmp_path), "--plots", str(tmp_path / "plots")])


def test_hp_table_flags_a_choice_at_the_end_of_the_grid():
    grid = [{"lr": lr, "weight_decay": wd, "val_acc": 0.5} for lr in (0.04, 0.16, 0.64) for wd in (0.01, 0.1)]

    def chose(lr: float) -> dict:
        return {"hp_search": {"grid": grid, "chosen": {"lr": lr, "weight_decay": 0.1}, "best_val_acc": 0.5,
                              "within_noise": 6}}
    table = summarize.hp_table({("gtsrb", "e2vpt"): chose(0.64), ("dtd10", "e2vpt"): chose(0.16),
                                ("gtsrb", "linear"): chose(0.04)})
    assert "| gtsrb | e2vpt | 0.64 (grid's top) | 0.1 | 50.0 | 6 of 6 |" in table
    assert "| dtd10 | e2vpt | 0.16 | 0.1 |" in table and "| gtsrb | linear | 0.04 (grid's bottom) |" in table


def test_fit_table_puts_the_saved_seeds_last_train_accuracy_beside_val_and_test_means():
    fitted = report([0.40, 0.42, 0.44])
    fitted["seeds"]["runs"] = [{"test_acc": a, "val_acc": v} for a, v in ((0.40, 0.50), (0.42, 0.54), (0.44, 0.58))]
    fitted["history"] = [{"stage": "stage1", "epoch": 12, "train_acc": 0.99},  # the saved seed's last epoch is last
                         {"stage": "rewind", "epoch": 1, "train_acc": 0.5}, {"stage": "rewind", "epoch": 2,
                                                                              "train_acc": 0.875}]
    table = summarize.fit_table({("dtd10", "e2vpt"): fitted, ("dtd10", "linear"): report([0.3])})
    assert "| dtd10 | e2vpt | 87.5 | 54.0 | 42.0 |" in table
    assert "| dtd10 | linear | - | - | 30.0 |" in table  # an older report without those figures: dashes
    assert table.index("| dtd10 | linear |") < table.index("| dtd10 | e2vpt |")  # the main table's method order


def test_a_sweep_with_missing_data_stops_before_any_run_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sweep.TASKS, "fashion-mnist", f"fmnist:{tmp_path / 'nowhere'}")
    with pytest.raises(SystemExit) as stop:
        vtab.main(["--backbone", "b.safetensors", "--out", str(tmp_path / "out"), "--tasks", "fashion-mnist",
                   "--ablation-tasks", "--curve-task", ""])
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "fashion-mnist: fmnist:" in err and "apt-get install dataset-fashion-mnist" in err


def test_grid_check_searches_past_each_edge_pick_and_skips_the_checks_with_a_report(tmp_path, monkeypatch, capsys):
    grid = [{"lr": lr, "weight_decay": wd, "val_acc": 0.5} for lr in (0.04, 0.16, 0.64) for wd in (0.01, 0.1)]
    for task, method, lr in [("gtsrb", "e2vpt", 0.64), ("dtd10", "e2vpt", 0.16), ("dtd10", "vpt-deep", 0.64),
                             ("gtsrb", "linear", 0.64), ("sign-digits", "e2vpt", 0.04)]:
        (tmp_path / "sweep" / task).mkdir(parents=True, exist_ok=True)
        reports.report_path(tmp_path / "sweep", task, method).write_text(json.dumps(
            {"hp_search": {"grid": grid, "chosen": {"lr": lr, "weight_decay": 0.1}},
             "config": {"epochs": 12, "hp_epochs": 4, "warmup_epochs": 2.0, "lr_grid": [0.04, 0.16, 0.64],
                        "val_group": sweep.VAL_GROUP.get(task)}}))
    check = tmp_path / "check"
    args = ["--backbone", "b.safetensors", "--out", str(tmp_path / "sweep"), "--grid-check", str(check),
            "--methods", "e2vpt", "vpt-deep", "--workers", "1"]  # one at a time: the calls come in the plan's order
    vtab.main([*args, "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("grid check: 3 runs chose the lr at an end of their grid, 0 already checked")
    assert "  gtsrb e2vpt (chose its grid's top; lr grid centred on 2.56)" in out and "  dtd10 vpt-deep" in out
    assert "  sign-digits e2vpt (chose its grid's bottom; lr grid centred on 0.01)" in out
    assert "dtd10 e2vpt" not in out and "linear" not in out  # a pick inside its grid; a method not asked for
    check.mkdir()
    (check / "dtd10-vpt-deep.log").write_text("...\n[hp-search] chose lr 0.64 wd 0.1 (val acc 0.5)\n")
    Path(f"{reports.grid_check_stem(check, 'dtd10', 'vpt-deep')}{reports.REPORT_SUFFIX}").write_text(json.dumps(
        {"hp_search": {"grid": grid, "chosen": {"lr": 0.64, "weight_decay": 0.1}}}))  # done: its report exists
    (check / "gtsrb-e2vpt.log").write_text("a check cut short before its pick\n")
    (check / "sign-digits-e2vpt.log").write_text("...\n[hp-search] chose lr 0.01 wd 0.1 (val acc 0.5)\n")  # and
    # cut short after it, without the report whose pick decides a rerun: checked again
    for task in ("gtsrb", "sign-digits"):
        monkeypatch.setitem(sweep.TASKS, task, str(tmp_path))  # data that exists: the check starts
    calls = []
    monkeypatch.setattr(vtab.subprocess, "call", lambda cmd, **_: calls.append(cmd) or 0)
    vtab.main(args)
    assert [c[c.index("--task-name") + 1] for c in calls] == ["gtsrb", "sign-digits"]
    cmd = calls[0]
    flag = {name: cmd[i + 1] for i, name in enumerate(cmd[:-1]) if name.startswith("--")}
    assert (flag["--task-name"], flag["--method"], flag["--lr"]) == ("gtsrb", "e2vpt", "2.56")
    assert (flag["--epochs"], flag["--hp-epochs"], flag["--seeds"]) == ("4", "4", "1")  # the run's grid points
    assert float(flag["--warmup-epochs"]) == pytest.approx(2.0 * 4 / 12)  # what the trainer gave each grid point
    assert "--hp-search" in cmd and "--search" not in cmd  # only the lr pick is asked: no pruning search
    assert flag["--out"] == str(check / "gtsrb-e2vpt.safetensors") and flag["--data"] == str(tmp_path)
    assert flag["--val-group"] == sweep.VAL_GROUP["gtsrb"] and "--val-group" not in calls[1]  # its task's split
    assert "[hp-search]" not in (check / "gtsrb-e2vpt.log").read_text()  # rewritten by the new attempt
    assert sweep.grid_check_centre([0.04, 0.16, 0.64]) == 2.56  # the new grid's lowest point is the old top
    assert sweep.grid_check_centre([0.04, 0.16, 0.64], "bottom") == 0.01  # its highest point the old bottom


def test_a_grid_check_that_moved_a_pick_reruns_the_sweeps_protocol_there_once(tmp_path, monkeypatch, capsys):
    grid = [{"lr": lr, "weight_decay": wd, "val_acc": 0.5} for lr in (0.04, 0.16, 0.64) for wd in (0.01, 0.1)]
    sweep_dir, check = tmp_path / "sweep", tmp_path / "check"
    for task, method in [("gtsrb", "e2vpt"), ("dtd10", "e2vpt")]:  # both chose their grid's top
        (sweep_dir / task).mkdir(parents=True)
        reports.report_path(sweep_dir, task, method).write_text(json.dumps(
            {"hp_search": {"grid": grid, "chosen": {"lr": 0.64, "weight_decay": 0.01}},
             "config": {"epochs": 12, "seeds": 3, "hp_epochs": 4, "warmup_epochs": 2.0, "batch_size": 64,
                        "optimizer": "sgd", "lr_grid": [0.04, 0.16, 0.64], "val_group": sweep.VAL_GROUP.get(task)}}))
    check.mkdir()
    for task, lr in [("gtsrb", 2.56), ("dtd10", 0.64)]:  # gtsrb's check moved up one step, dtd10's kept its pick
        stem = reports.grid_check_stem(check, task, "e2vpt")
        stem.with_suffix(".log").write_text(f"[hp-search] chose lr {lr} wd 0.1 (val acc 0.6)\n")
        Path(f"{stem}{reports.REPORT_SUFFIX}").write_text(json.dumps(
            {"hp_search": {"grid": grid, "chosen": {"lr": lr, "weight_decay": 0.1}}}))
    args = ["--backbone", "b.safetensors", "--out", str(sweep_dir), "--grid-check", str(check), "--methods", "e2vpt"]
    vtab.main([*args, "--dry-run"])
    out = capsys.readouterr().out
    assert "then the sweep's protocol at each moved pick: 1 to run" in out
    assert "  gtsrb e2vpt at lr 2.56, weight decay 0.1" in out and "dtd10 e2vpt at" not in out
    monkeypatch.setitem(sweep.TASKS, "gtsrb", str(tmp_path))  # data that exists: the rerun starts
    calls = []
    monkeypatch.setattr(vtab.subprocess, "call", lambda cmd, **_: calls.append(cmd) or 0)
    vtab.main(args)
    [cmd] = calls  # both checks are done; only the moved pick is rerun
    flag = {name: cmd[i + 1] for i, name in enumerate(cmd[:-1]) if name.startswith("--")}
    assert (flag["--lr"], flag["--weight-decay"], flag["--epochs"], flag["--seeds"]) == ("2.56", "0.1", "12", "3")
    assert "--no-hp-search" in cmd and "--search" in cmd  # the sweep's protocol: e2vpt's pruning search included
    assert (flag["--batch-size"], flag["--optimizer"]) == ("64", "sgd")  # the sweep's, not this command's defaults
    final = reports.grid_check_finals(check) / "gtsrb-e2vpt"
    assert flag["--out"] == str(final.with_suffix(".safetensors")) and final.with_suffix(".log").exists()
    Path(f"{final}{reports.REPORT_SUFFIX}").write_text("{}")  # finished: not rerun
    vtab.main([*args, "--dry-run"])
    assert "at each moved pick: 0 to run" in capsys.readouterr().out


def test_a_sweep_or_grid_check_on_another_backbone_than_the_sweeps_is_refused_in_one_line(tmp_path, capsys):
    from promptserve.backbone import Backbone

    demo = REPO / "assets" / "backbones" / "vit_tiny_p4_32_distill_mnv1_mlp5.safetensors"
    grid = [{"lr": lr, "weight_decay": 0.1, "val_acc": 0.5} for lr in (0.04, 0.16, 0.64)]
    (tmp_path / "sweep" / "gtsrb").mkdir(parents=True)
    report = reports.report_path(tmp_path / "sweep", "gtsrb", "e2vpt")
    args = ["--backbone", str(demo), "--out", str(tmp_path / "sweep"), "--grid-check", str(tmp_path / "check"),
            "--methods", "e2vpt", "--dry-run"]
    for fingerprint in ("another backbone's", Backbone.from_file(demo).fingerprint):
        report.write_text(json.dumps({"backbone_fingerprint": fingerprint, "hp_search": {
            "grid": grid, "chosen": {"lr": 0.64, "weight_decay": 0.1}},
            "config": {"lr_grid": [0.04, 0.16, 0.64], "val_group": sweep.VAL_GROUP["gtsrb"]}}))
        resumed = [*args[:4], "--tasks", "gtsrb", "--ablation-tasks", "--curve-task", "", "--dry-run"]
        if fingerprint == "another backbone's":
            for command in (args, resumed):  # the grid check, and the sweep resumed
                with pytest.raises(SystemExit) as stop:
                    vtab.main(command)
                assert stop.value.code == 2 and "is not the backbone the sweep under" in capsys.readouterr().err
        else:
            vtab.main(args)
            assert "1 runs chose the lr at an end of their grid" in capsys.readouterr().out
            vtab.main(resumed)
            assert "1 already done" in capsys.readouterr().out


def test_the_sweep_is_defined_once_in_terms_the_trainer_knows():
    assert list(sweep.METHODS) == list(config.METHODS)  # the tables list them in the trainer's order
    assert sorted(sweep.RUN_ORDER) == sorted(sweep.METHODS)
    assert [row.run for row in sweep.ABLATION_ROWS if row.flags is None] == [sweep.ABLATION_ROWS[-1].run] \
        == [sweep.HP_SOURCE]  # only the last row, the main e2vpt run, has no run of its own
    names = [*sweep.METHODS, *(row.run for row in sweep.ABLATION_ROWS[:-1]),
             *(sweep.curve_run(f)[0] for f in sweep.CURVE_FRACTIONS), *(row.run for row in sweep.PARTIAL_ROWS)]
    assert len(names) == len(set(names))  # one report per name in a task's folder: none overwrites another


def test_partial_rows_fine_tune_part_of_the_demo_architecture_only_when_asked(tmp_path, capsys):
    """Each --trainable pattern finds some, not all, of the demo student's weights, and the trainer takes the
    row's flags; the sweep runs them only for --partial-tasks."""
    import timm

    from training.methods import trainable_weights

    args = ["--backbone", "b.safetensors", "--out", str(tmp_path), "--dry-run", "--ablation-tasks", "--curve-task", ""]
    vtab.main(args)
    assert "partial" not in capsys.readouterr().out
    vtab.main([*args, "--partial-tasks", "gtsrb"])
    out = capsys.readouterr().out
    assert out.startswith("23 runs") and all(f"  gtsrb {row.run}\n" in out for row in sweep.PARTIAL_ROWS)
    student = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=6, num_classes=10)
    weights = [n for n, _ in student.named_parameters() if not n.startswith("head.")]
    for row in sweep.PARTIAL_ROWS:
        assert 0 < len(trainable_weights(student, row.trainable)) < len(weights)
        flags = sweep.partial_flags(row)
        assert config.TrainConfig(method=flags[1], trainable=flags[3], lr=row.lr).trainable == row.trainable


def test_the_grid_check_covers_partial_rows_of_partial_tasks_with_their_own_weights(tmp_path, monkeypatch, capsys):
    """A partial row that chose its grid's top is checked (and rerun at a moved pick) as the weights it trains,
    with the check's lr centre instead of the row's own; only for --partial-tasks. The stem has a grid centre of
    its own, the first two blocks full fine-tuning's."""
    first2, stem = sweep.PARTIAL_BY_RUN["partial-first2"], sweep.PARTIAL_BY_RUN["partial-stem"]
    grids = {first2.run: [0.00025, 0.001, 0.004], stem.run: [0.01, 0.04, 0.16]}
    picks = {first2.run: 0.004, stem.run: 0.64}  # the check keeps first2's pick and moves the stem's up

    def hp_search(lrs: list[float], lr: float) -> dict:
        grid = [{"lr": x, "weight_decay": wd, "val_acc": 0.5} for x in lrs for wd in (0.01, 0.1)]
        return {"grid": grid, "chosen": {"lr": lr, "weight_decay": 0.1}}

    sweep_dir, check = tmp_path / "sweep", tmp_path / "check"
    (sweep_dir / "sign-digits").mkdir(parents=True)
    for run, lrs in grids.items():
        reports.report_path(sweep_dir, "sign-digits", run).write_text(json.dumps(
            {"hp_search": hp_search(lrs, lrs[-1]),
             "config": {"epochs": 12, "seeds": 3, "hp_epochs": 4, "warmup_epochs": 2.0, "batch_size": 32,
                        "optimizer": "adamw", "lr_grid": lrs, "val_group": None}}))
    args = ["--backbone", "b.safetensors", "--out", str(sweep_dir), "--grid-check", str(check)]
    vtab.main([*args, "--dry-run"])
    assert capsys.readouterr().out.startswith("grid check: 0 runs")  # partial rows only when asked for
    vtab.main([*args, "--partial-tasks", "sign-digits", "--dry-run"])
    out = capsys.readouterr().out
    assert "  sign-digits partial-stem (chose its grid's top; lr grid centred on 0.64)" in out
    assert "  sign-digits partial-first2 (chose its grid's top; lr grid centred on 0.016)" in out
    monkeypatch.setitem(sweep.TASKS, "sign-digits", str(tmp_path))  # data that exists: the checks start
    calls = []

    def train(cmd, **_):  # a check writes the pick of `picks` into its report
        calls.append(cmd)
        if "--hp-search" in cmd:
            run = next(r for r in picks if cmd[cmd.index("--out") + 1].endswith(f"-{r}.safetensors"))
            Path(f"{reports.grid_check_stem(check, 'sign-digits', run)}{reports.REPORT_SUFFIX}").write_text(
                json.dumps({"hp_search": hp_search(grids[run], picks[run])}))
        return 0

    monkeypatch.setattr(vtab.subprocess, "call", train)
    vtab.main([*args, "--partial-tasks", "sign-digits"])
    flags = [{name: cmd[i + 1] for i, name in enumerate(cmd[:-1]) if name.startswith("--")} for cmd in calls]
    checks = sorted((f["--trainable"], f["--lr"]) for f in flags[:2])  # the two checks run side by side
    assert checks == sorted([(first2.trainable, "0.016"), (stem.trainable, "0.64")])
    assert (flags[2]["--trainable"], flags[2]["--lr"]) == (stem.trainable, "0.64")  # then one rerun
    assert all(f["--method"] == "full" and cmd.count("--lr") == 1 for f, cmd in zip(flags, calls, strict=True))
    rerun = flags[-1]  # the sweep's protocol at the stem's new pick; first2 kept its pick: no rerun
    assert "--no-hp-search" in calls[-1] and (rerun["--seeds"], rerun["--epochs"], rerun["--weight-decay"]) == (
        "3", "12", "0.1")
    assert rerun["--out"] == str((reports.grid_check_finals(check) / "sign-digits-partial-stem").with_suffix(
        ".safetensors"))


def test_the_experiment_modules_import_each_other_without_a_cycle():
    """plots and summarize share reports.py and sweep.py instead of importing each other, lazily or not."""
    folder = Path(vtab.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "training.experiments":
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training.experiments."):
                names.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                names |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("training.experiments.")}
        imports[path.stem] = names
    assert imports["summarize"] == imports["plots"] == {"reports", "sweep"}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in imports.get(start, ()))

    assert [m for m in imports if reaches(m, m)] == []


def test_a_finished_run_whose_validation_split_the_sweep_now_draws_otherwise_is_refused_in_one_line(tmp_path, capsys):
    """GTSRB's runs held out validation image by image before sweep.VAL_GROUP split it by track: adding runs or
    checks to such a sweep, or a by-image check beside by-track runs, would put runs tuned on two different
    validation sets in one table; an older sweep with nothing left to run still resumes (its docs' commands)."""
    grid = [{"lr": lr, "weight_decay": 0.1, "val_acc": 0.5} for lr in (0.04, 0.16, 0.64)]
    (tmp_path / "sweep" / "gtsrb").mkdir(parents=True)
    report = reports.report_path(tmp_path / "sweep", "gtsrb", "e2vpt")
    check = reports.grid_check_report(tmp_path / "check", "gtsrb", "e2vpt")
    grid_check = ["--backbone", "b.safetensors", "--out", str(tmp_path / "sweep"), "--grid-check",
                  str(tmp_path / "check"), "--methods", "e2vpt", "--dry-run"]
    resumed = [*grid_check[:4], "--tasks", "gtsrb", "--ablation-tasks", "--curve-task", "", "--dry-run"]

    def run(val_group):
        return json.dumps({"hp_search": {"grid": grid, "chosen": {"lr": 0.64, "weight_decay": 0.1}},
                           "config": {"lr_grid": [0.04, 0.16, 0.64], "val_group": val_group}})

    def refused(command, stale: Path):
        with pytest.raises(SystemExit) as stop:
            vtab.main(command)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "held out validation otherwise than sweep.VAL_GROUP now asks for gtsrb" in err
        assert f"({stale}): move them" in err

    report.write_text(run(None))
    refused(grid_check, report)
    refused(resumed, report)
    vtab.main([*resumed, "--methods", "e2vpt"])  # an older sweep with nothing left to run stays as it is
    assert "1 runs, 1 already done" in capsys.readouterr().out
    report.write_text(run(sweep.VAL_GROUP["gtsrb"]))
    vtab.main(grid_check)
    assert "1 runs chose the lr at an end of their grid, 0 already checked" in capsys.readouterr().out
    vtab.main(resumed)
    assert "1 already done" in capsys.readouterr().out
    check.parent.mkdir()
    check.write_text(run(None))  # a check left from the by-image sweep: not reused
    refused(grid_check, check)
    check.write_text(run(sweep.VAL_GROUP["gtsrb"]))
    vtab.main(grid_check)
    assert "1 already checked" in capsys.readouterr().out
    report.write_text(run(None))
    check.write_text(run(None))  # an older sweep and its finished check: nothing to add, so no refusal
    vtab.main(grid_check)
    assert "1 already checked" in capsys.readouterr().out
