"""`promptserve tasks ...`: list, show, history, push, rollback and rm against a LocalStore directory or a
Redis URL. Tables for people, --json for scripts. Errors are one line on stderr: exit 2 for a bad input
(name, file, size, format), 1 for everything else (not found, Redis down)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from prompt_store import open_store
from prompt_store.base import InvalidPromptSet, InvalidTaskName, StoreError, TaskRecord, TooLarge

app = typer.Typer(help="The prompt-set registry: list, inspect, push, roll back and remove tasks.",
                  no_args_is_help=True)

STORE = typer.Option("./registry", "--store", envvar="PROMPTSERVE_STORE",
                     help="Registry directory, or redis://host:port/db for a RedisStore.")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
BAD_INPUT = (InvalidTaskName, InvalidPromptSet, TooLarge)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _opened(spec: str):
    """The store, with every expected failure turned into one line on stderr and an exit code."""
    try:
        store = open_store(spec)
    except (StoreError, OSError, ValueError) as e:
        raise _fail(f"cannot open store {spec!r}: {e}", 1) from None
    try:
        yield store
    except BAD_INPUT as e:
        raise _fail(str(e), 2) from None
    except (StoreError, OSError) as e:
        raise _fail(str(e), 1) from None
    finally:
        store.close()


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _metrics(metrics: dict) -> str:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items())


def _history_table(records: list[TaskRecord], title: str, current: str) -> Table:
    table = Table(title=title)
    for column in ("version", "size", "created (UTC)", "method", "classes", "metrics"):
        table.add_column(column, no_wrap=column != "metrics", overflow="fold")
    for r in records:
        table.add_row(r.version[:12] + (" *" if r.version == current else ""), _size(r.size),
                      r.created[:19].replace("T", " "), r.method, str(len(r.labels)), _metrics(r.metrics))
    return table


def _accuracy(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _list_table(records: list[TaskRecord], title: str) -> Table:
    """What a person scans a registry for, in 80 columns: the other metrics are in `show`."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, collapse_padding=True)
    for column in ("task", "version", "classes", "test acc", "val acc", "size", "method"):
        table.add_column(column, overflow="fold", no_wrap=column != "task",
                         justify="right" if column in ("classes", "test acc", "val acc", "size") else "left")
    for r in records:
        table.add_row(r.task, r.version[:12], str(len(r.labels)), _accuracy(r.metrics, "test_acc"),
                      _accuracy(r.metrics, "val_acc"), _size(r.size), r.method or "-")
    return table


@app.command("list")
def list_tasks(store: str = STORE, as_json: bool = AS_JSON) -> None:
    """Every task and the version it serves, with its classes, accuracy and size."""
    with _opened(store) as s:
        records = s.list()
    if as_json:
        _print_json([r.to_dict() for r in records])
    elif not records:
        typer.echo(f"no tasks in {store}")
    else:
        Console().print(_list_table(records, f"{len(records)} task{'s' * (len(records) != 1)} in {store}"))


@app.command()
def show(task: str, store: str = STORE, as_json: bool = AS_JSON) -> None:
    """One task's current version, with its labels, metrics and backbone fingerprint."""
    with _opened(store) as s:
        record = s.resolve(task)
    if as_json:
        _print_json(record.to_dict())
        return
    table = Table(title=f"task {task}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.to_dict().items():
        if key == "labels":
            value = f"{len(value)}: " + ", ".join(value[:20]) + (", ..." if len(value) > 20 else "")
        elif key == "metrics":
            value = json.dumps(value)
        elif key == "size":
            value = f"{_size(value)} ({value} bytes)"
        table.add_row(key, str(value))
    Console().print(table)


@app.command()
def history(task: str, store: str = STORE, as_json: bool = AS_JSON) -> None:
    """Every version of a task, oldest first; * marks the one it serves."""
    with _opened(store) as s:
        records, current = s.history(task), s.resolve(task).version
    if as_json:
        _print_json([{**r.to_dict(), "current": r.version == current} for r in records])
    else:
        Console().print(_history_table(records, f"history of {task} (* = current)", current))


@app.command()
def push(file: Path = typer.Argument(..., help="A prompt set (.safetensors)."),
         task: str = typer.Option(..., "--task", "-t", help="Task name to point at it."),
         store: str = STORE, as_json: bool = AS_JSON) -> None:
    """Validate a prompt set, store it and point TASK at it."""
    try:
        data = file.read_bytes()
    except OSError as e:
        raise _fail(f"cannot read {file}: {e.strerror}", 2) from None
    with _opened(store) as s:
        record = s.put(task, data)
    if as_json:
        _print_json(record.to_dict())
    else:
        typer.echo(f"{task} -> {record.version[:12]} ({_size(record.size)}, {record.method}, "
                   f"{len(record.labels)} classes)")


@app.command()
def rollback(task: str,
             version: str = typer.Argument(..., help="A version from the history, or a unique 6+ digit prefix."),
             store: str = STORE, as_json: bool = AS_JSON) -> None:
    """Point TASK back at an earlier version (nothing is copied: versions are kept until rm)."""
    with _opened(store) as s:
        record = s.rollback(task, version)
    if as_json:
        _print_json(record.to_dict())
    else:
        typer.echo(f"{task} -> {record.version[:12]} (put {record.created})")


@app.command()
def fsck(store: str = STORE, repair: bool = typer.Option(False, "--repair", help=(
             "Move unreadable task records aside (to quarantine/), remove orphan blobs and leftover temp files.")),
         as_json: bool = AS_JSON) -> None:
    """Check the registry: unreadable task records, versions with no blob, orphan blobs, temp files.
    Exit 0 when clean (or repaired), 1 when problems remain."""
    with _opened(store) as s:
        report = s.fsck(repair=repair)
    if as_json:
        _print_json(report.to_dict())
    else:
        for task, reason in sorted(report.broken_tasks.items()):
            typer.echo(f"broken task {task}: {reason}" + (" (moved aside)" if repair else ""))
        for version in report.orphan_blobs:
            typer.echo(f"orphan blob {version[:12]}" + (" (removed)" if repair else ""))
        for name in report.temp_files:
            typer.echo(f"leftover temp file {name}" + (" (removed)" if repair else ""))
        typer.echo(f"{store}: " + ("clean" if report.clean else "repaired" if repair else
                                   "problems found; `promptserve tasks fsck --repair` fixes them"))
    if not (report.clean or repair):
        raise typer.Exit(1)


@app.command("rm")
def remove(task: str, store: str = STORE, as_json: bool = AS_JSON) -> None:
    """Remove TASK and every version no other task uses."""
    with _opened(store) as s:
        s.delete(task)
    if as_json:
        _print_json({"deleted": task})
    else:
        typer.echo(f"removed {task}")
