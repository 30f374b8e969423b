"""The command line as a user meets it, read in this process: `serve` has a flag for every ServerSettings field
(and docs/serving.md lists every field), flags reach the settings, `tasks list` reads at 80 columns, --help reads
well. The commands run as a user runs them (one `error:` line per mistake) are
tests/integration/test_cli_processes.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from prompt_store.cli import app as tasks_app
from server.cli import flag_names, serve, settings_from_flags
from server.settings import ServerSettings
from tests.store_utils import make_prompt_set

REPO = Path(__file__).resolve().parents[2]


def serve_options() -> dict[str, list[str]]:
    app = typer.Typer()
    app.command()(serve)
    return {p.name: [*p.opts, *p.secondary_opts] for p in get_command(app).params}


def test_every_setting_has_a_serve_flag():
    options = serve_options()
    missing = [name for name in ServerSettings.model_fields if name not in options]
    assert missing == [], f"ServerSettings fields without a `serve` flag: {missing}"
    flags = {flag for names in options.values() for flag in names}
    assert {"--decode-threads", "--max-images-per-request", "--redis-retry-s"} <= flags
    # the names the README, docs and scripts use keep working
    for field, flag in (("backbone_weights", "--weights"), ("backbone_weights", "--backbone-weights"),
                        ("backbone_kwargs", "--timm-kwargs"), ("pinned_tasks", "--pin"),
                        ("demo_tasks_dir", "--seed-from"), ("admin_token", "--admin-token-file")):
        assert flag in options[field], (field, options[field])


def test_docs_list_every_setting():
    text = (REPO / "docs" / "serving.md").read_text()
    table = text[text.index("## Settings"):]
    table = table[:table.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?(?:, `([a-z_]+)`)?", table, re.M))
    names = {name for row in listed for name in row if name}
    assert sorted(set(ServerSettings.model_fields) - names) == [], "docs/serving.md's settings table misses these"


def test_flags_reach_the_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTSERVE_MAX_BATCH", raising=False)
    token = tmp_path / "admin"
    token.write_text("s3cret\n")
    settings = settings_from_flags({"max_batch": 7, "decode_threads": 3, "pinned_tasks": ["a", "b"],
                                    "backbone_kwargs": '{"img_size": 64}', "admin_token": token,
                                    "demo_tasks_dir": str(tmp_path), "port": None})
    assert (settings.max_batch, settings.decode_threads, settings.pinned_tasks) == (7, 3, ["a", "b"])
    assert settings.backbone_kwargs == {"img_size": 64} and settings.admin_token.get_secret_value() == "s3cret"
    assert settings.seed_demo and settings.demo_tasks_dir == str(tmp_path) and settings.port == 8000
    assert flag_names("preload") == ("--preload/--no-preload",)


def test_tasks_list_reads_at_80_columns(tmp_path):
    runner = CliRunner(env={"PROMPTSERVE_STORE": str(tmp_path / "registry"), "COLUMNS": "80"})
    for seed, name in ((1, "cats"), (2, "a-rather-long-task-name-for-flowers")):
        (tmp_path / f"{name}.safetensors").write_bytes(make_prompt_set(seed=seed, classes=3 + seed))
        assert runner.invoke(tasks_app, ["push", str(tmp_path / f"{name}.safetensors"), "-t", name]).exit_code == 0
    listing = runner.invoke(tasks_app, ["list"]).stdout
    assert max(len(line) for line in listing.splitlines()) <= 80, listing
    header = next(line for line in listing.splitlines() if "version" in line)
    assert all(c in header for c in ("task", "version", "classes", "test acc", "size")), listing
    assert "a-rather-long-task-name-for-flowers" not in listing  # only a long name folds: short ones stay whole
    cats = next(line for line in listing.splitlines() if line.strip().startswith("cats"))
    assert "0.250" in cats and " 4 " in cats and ("KiB" in cats or " B" in cats), listing


def test_library_code_logs_instead_of_printing():
    """promptserve/, kernels/, server/, training/, prompt_store/ log through `logging` (CLI modules echo through
    typer/rich); training/experiments/ holds scripts, whose output is their point."""
    import ast

    found = []
    for package in ("promptserve", "kernels", "server", "training", "prompt_store"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "experiments" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Name) and node.id == "print":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == [], "print (or log=print) in library code: use logging.getLogger(__name__)"


def test_train_size_takes_a_count_or_all_and_refuses_zero():
    from training.cli import parse_train_size
    from training.config import TrainConfig, TrainConfigError

    assert parse_train_size("1000") == 1000 and parse_train_size("all") is None and parse_train_size("ALL") is None
    for bad in ("0", "-5", "many"):
        with pytest.raises(typer.BadParameter, match="positive number of images, or 'all'"):
            parse_train_size(bad)
    with pytest.raises(TrainConfigError, match="--train-size all"):
        TrainConfig(train_size=0)


def test_help_shows_no_value_hint_on_flags_and_keeps_brackets():
    """Issue 24 item 8: on/off flags showed `<bool>` (then `--json true` failed), and rich markup swallowed
    `[ray]` in `promptserve[ray]`."""
    from click.testing import CliRunner as ClickRunner

    from promptserve_cli import build_app, quiet_flags

    command = get_command(build_app())
    quiet_flags(command)
    runner = ClickRunner(env={"COLUMNS": "200"})
    for name in ("serve", "classify", "train", "eval", "distill", "probe", "push", "rollback", "delete"):
        result = runner.invoke(command, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.output and "BOOLEAN" not in result.output, (name, result.output)
    assert "promptserve[ray]" in runner.invoke(command, ["serve", "--help"]).output
