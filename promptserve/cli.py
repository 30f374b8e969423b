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


@app.callback()
def _root() -> None:
    """Serve many vision tasks from one frozen ViT with E2VPT prompt sets."""


@app.command()
def info(backbone: str = typer.Argument(..., help="A weights file written by `promptserve pretrain`, or a timm name."),
         prompt_set: str = typer.Option(None, "--task", help="Also check this prompt set against the backbone.")):
    """Print a backbone's dims, data config and fingerprint (and validate a prompt set against it)."""
    from promptserve import PromptSet, PromptSetError
    from promptserve.backbone import BackboneError, load_backbone

    try:
        bb = load_backbone(backbone)
    except (BackboneError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"backbone     {bb.spec}\nfingerprint  {bb.fingerprint}\nlayers {bb.num_layers}  dim {bb.embed_dim}  "
               f"heads {bb.num_heads}  params {bb.num_params:,}\ndata         {bb.data_config}")
    if prompt_set:
        ps = PromptSet.load(prompt_set)
        try:
            ps.validate(bb)
        except PromptSetError as e:
            typer.echo(f"prompt set   INVALID ({e.reason}): {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"prompt set   ok: {ps.method}, {ps.num_classes} classes, {ps.num_prompt_params():,} prompt params, "
                   f"version {ps.version[:12]}")


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
