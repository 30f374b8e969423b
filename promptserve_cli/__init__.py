"""The `promptserve` console command: a thin floor above every package that mounts their commands.

The core (`promptserve/`) must not import server, training or prompt_store code (tests/unit/
test_import_graph.py holds it), so the one place that knows them all is this module. Commands are
imported when the app is built, which only costs typer and the packages' CLI modules (they import
torch, uvicorn and friends inside the command bodies).

User mistakes are one `error: ...` line on stderr (exit 2 for bad input, 1 otherwise); an unexpected
exception is one line too, and `--debug` (or PROMPTSERVE_DEBUG=1) shows its traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from promptserve.logs import LOG_LEVELS, setup_logging

HELP = "Serve many vision tasks from one frozen ViT with E2VPT prompt sets."
_debug = {"on": os.environ.get("PROMPTSERVE_DEBUG", "") not in ("", "0")}


def build_app() -> typer.Typer:
    from prompt_store import cli as store_cli
    from promptserve import cli as core_cli
    from server import cli as server_cli
    from training import cli as training_cli

    # rich_markup_mode=None: help text is printed as written ("promptserve[ray]" is not a markup tag)
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None)

    @app.callback()
    def root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also PROMPTSERVE_DEBUG=1)."),
             log_level: str = typer.Option("warning", "--log-level", help=f"Library log lines on stderr: "
                                           f"{', '.join(LOG_LEVELS)} (`serve` has its own, default info).")):
        """Serve many vision tasks from one frozen ViT with E2VPT prompt sets."""
        _debug["on"] = _debug["on"] or debug
        if log_level.lower() not in LOG_LEVELS:
            raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
        setup_logging(log_level)

    app.command("serve")(server_cli.serve)
    app.command("classify")(server_cli.classify)
    app.command("push")(server_cli.push)
    app.command("rollback")(server_cli.rollback)
    app.command("delete")(server_cli.delete)
    app.command("train")(training_cli.train)
    app.command("eval")(training_cli.evaluate)
    app.command("pretrain")(training_cli.pretrain)
    app.command("distill")(training_cli.distill)
    app.command("probe")(training_cli.probe)
    app.command("info")(core_cli.info)
    app.add_typer(store_cli.app, name="tasks", help="Inspect and edit a prompt-set registry (directory or redis://).")
    return app


def quiet_flags(command) -> None:
    """On/off flags take no value: no `<bool>` hint beside them in --help (`--json true` then fails)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        quiet_flags(sub)


def main(argv: list[str] | None = None) -> None:
    """The console script: run the app; an exception that escapes a command is one line unless --debug."""
    try:
        command = typer.main.get_command(build_app())
        quiet_flags(command)
        command(args=argv, prog_name="promptserve")
    except Exception as e:  # typer.Exit / usage errors are SystemExit and pass through untouched
        if _debug["on"]:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        typer.echo(f"error: {message} ({type(e).__name__}; --debug shows the traceback)", err=True)
        sys.exit(1)
