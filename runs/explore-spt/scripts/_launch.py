"""The trainer's `train` command, run in this process after a scratch script has patched the trainer."""
import sys

import typer


def run_train() -> None:
    from training.cli import train

    app = typer.Typer(add_completion=False)
    app.command("train")(train)
    app.command("other")(lambda: None)  # two commands: typer then keeps the `train` word on the command line
    app(sys.argv[1:])
