"""`promptserve tasks ...` (prompt_store.cli.app) against a LocalStore directory."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from prompt_store.cli import app
from tests.store_utils import free_port, make_prompt_set

OLD, NEW = make_prompt_set(seed=1), make_prompt_set(seed=2, classes=5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cli(tmp_path):
    """Runs the CLI on a registry in tmp_path (through PROMPTSERVE_STORE, as a deployment would)."""
    runner = CliRunner(env={"PROMPTSERVE_STORE": str(tmp_path / "registry"), "COLUMNS": "160"})
    (tmp_path / "old.safetensors").write_bytes(OLD)
    (tmp_path / "new.safetensors").write_bytes(NEW)
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 100)

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    run.dir = tmp_path
    return run


def test_push_show_history_rollback_rm_round_trip(cli):
    pushed = json.loads(cli("push", cli.dir / "old.safetensors", "--task", "cats", "--json").stdout)
    assert pushed["version"] == sha(OLD) and pushed["labels"] == ["class0", "class1", "class2"]
    assert sha(NEW)[:12] in cli("push", cli.dir / "new.safetensors", "-t", "cats").stdout
    assert json.loads(cli("show", "cats", "--json").stdout)["version"] == sha(NEW)
    history = json.loads(cli("history", "cats", "--json").stdout)
    assert [(h["version"], h["current"]) for h in history] == [(sha(OLD), False), (sha(NEW), True)]
    assert json.loads(cli("rollback", "cats", sha(OLD)[:8], "--json").stdout)["version"] == sha(OLD)
    listed = json.loads(cli("list", "--json").stdout)
    assert [(r["task"], r["version"]) for r in listed] == [("cats", sha(OLD))]
    assert json.loads(cli("rm", "cats", "--json").stdout) == {"deleted": "cats"}
    assert json.loads(cli("list", "--json").stdout) == []


def test_tables_are_readable(cli):
    cli("push", cli.dir / "old.safetensors", "--task", "cats")
    cli("push", cli.dir / "new.safetensors", "--task", "cats")
    listing = cli("list").stdout
    assert "cats" in listing and sha(NEW)[:12] in listing and "0.500" in listing  # val acc
    assert f"{sha(NEW)[:12]} *" in cli("history", "cats").stdout
    shown = cli("show", "cats").stdout
    assert "backbone_fingerprint" in shown and "class4" in shown


def test_an_explicit_store_option_wins_over_the_environment(cli, tmp_path):
    other = tmp_path / "elsewhere"
    cli("push", cli.dir / "old.safetensors", "--task", "cats", "--store", other)
    assert json.loads(cli("list", "--json").stdout) == []
    assert len(json.loads(cli("list", "--json", "--store", other).stdout)) == 1


@pytest.mark.parametrize(("args", "code", "says"), [
    (("push", "{dir}/old.safetensors", "--task", "../etc"), 2, "invalid task name"),
    (("push", "{dir}/junk.safetensors", "--task", "cats"), 2, "not a valid prompt set"),
    (("push", "{dir}/missing.safetensors", "--task", "cats"), 2, "cannot read"),
    (("show", "nope"), 1, "no task 'nope'"),
    (("history", "nope"), 1, "no task 'nope'"),
    (("rollback", "nope", "abcdef"), 1, "no task 'nope'"),
    (("rm", "nope"), 1, "no task 'nope'"),
])
def test_errors_are_one_line_on_stderr_with_an_exit_code(cli, args, code, says):
    result = cli(*(a.format(dir=cli.dir) for a in args), code=code)
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert json.loads(cli("list", "--json").stdout) == []  # nothing was written


def test_an_unreachable_redis_is_one_clear_line(cli):
    result = cli("list", "--store", f"redis://127.0.0.1:{free_port()}/0", code=1)
    assert "unreachable" in result.stderr and result.stderr.count("\n") == 1
