"""The `promptserve` command. Each package contributes its own typer app; they are mounted lazily so
`promptserve --help` stays fast and the core never imports server or training code at import time."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Serve many vision tasks from one frozen ViT with E2VPT prompt sets.",
                  no_args_is_help=True, add_completion=False)

# (sub-command group, module exposing a typer app named `app`, help)
GROUPS = [
    ("tasks", "prompt_store.cli", "Inspect and edit a prompt-set registry (directory or redis://)."),
]
# (command, module, function name): single commands registered from other packages
COMMANDS = [
    ("serve", "server.cli", "serve"),
    ("classify", "server.cli", "classify"),
    ("push", "server.cli", "push"),
    ("train", "training.cli", "train"),
    ("eval", "training.cli", "evaluate"),
    ("pretrain", "training.cli", "pretrain"),
]


def _mount() -> None:
    for name, module, help_text in GROUPS:
        try:
            app.add_typer(importlib.import_module(module).app, name=name, help=help_text)
        except ModuleNotFoundError as e:  # only a package missing from this checkout is skipped
            if e.name not in (module, module.split(".")[0]):
                raise
    for name, module, func in COMMANDS:
        try:
            app.command(name)(getattr(importlib.import_module(module), func))
        except ModuleNotFoundError as e:
            if e.name not in (module, module.split(".")[0]):
                raise


def main() -> None:
    _mount()
    app()
