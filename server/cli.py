"""`promptserve serve`, `promptserve classify`, `promptserve push`: plain functions that promptserve_cli
registers as commands. `serve`'s flags are generated from ServerSettings (flags override PROMPTSERVE_*
environment variables, which override defaults); `classify` and `push` go through promptserve.Client."""

from __future__ import annotations

import csv
import inspect
import json
import sys
import types
import typing
from pathlib import Path

import typer
from pydantic import SecretStr

from promptserve.cli import fail, parse_timm_kwargs, read_token_file
from promptserve.client import ADMIN_TOKEN_ENV, API_TOKEN_ENV, URL_ENV, ClientError
from promptserve.logs import LOG_LEVELS

CLASSIFY_GROUP = 64  # images per Client.classify call from the CLI (it splits them further to the server's limit)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


# Every ServerSettings field is a `serve` flag: --field-name, except where the field also or only answers to the
# shorter name the other commands, the README and scripts use (--weights, --pin), or the value is a secret (read
# from a file, never put on the command line).
FLAG_NAMES: dict[str, tuple[str, ...]] = {
    "backbone_weights": ("--weights", "--backbone-weights"),
    "backbone_pretrained": ("--pretrained/--no-pretrained",),
    "backbone_random_init": ("--random-init/--no-random-init",),
    "backbone_kwargs": ("--timm-kwargs",),
    "pinned_tasks": ("--pin", "--pinned-tasks"),
    "demo_tasks_dir": ("--seed-from", "--demo-tasks-dir"),
    "admin_token": ("--admin-token-file",),
    "api_token": ("--api-token-file",),
}
FILE_FIELDS = {"admin_token", "api_token"}  # the flag names a file holding the secret
EXTRA_HELP = {
    "demo_tasks_dir": "Seed from this folder of *.safetensors (implies --seed-demo).",
    "host": "Bind address (0.0.0.0 exposes the server).",
    "port": "Port.",
    "max_images_per_request": "Images one classify request may carry (413 beyond); clients split longer lists.",
    "default_top_k": "Labels per image when a request does not say.",
    "admin_token": "The admin token's file (or PROMPTSERVE_ADMIN_TOKEN); unset: one is generated and logged.",
    "api_token": "Read the API token from this file (or PROMPTSERVE_API_TOKEN); unset: the API is open.",
}


def flag_names(field: str) -> tuple[str, ...]:
    from server.settings import ServerSettings

    if field in FLAG_NAMES:
        return FLAG_NAMES[field]
    dashed = "--" + field.replace("_", "-")
    plain = _flag_type(ServerSettings.model_fields[field].annotation)
    return (f"{dashed}/--no-{dashed[2:]}",) if plain is bool else (dashed,)


def _flag_type(annotation):
    """The command-line type of a settings field: `X | None` is X, a Literal a str (pydantic checks it)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal or annotation is SecretStr:
        return str
    if typing.get_origin(annotation) is list:
        return list[str]
    if annotation is dict:
        return str  # JSON
    return annotation


def _settings_options() -> list[inspect.Parameter]:
    from server.settings import ServerSettings

    params = []
    for name, field in ServerSettings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        env = "PROMPTSERVE_" + name.upper()
        shown = False if default in (None, [], {}) or name in FILE_FIELDS else str(default)
        help_text = EXTRA_HELP[name] if name in FILE_FIELDS else \
            f"{EXTRA_HELP.get(name) or field.description or ''} (env {env})".strip()
        kind = Path if name in FILE_FIELDS else _flag_type(field.annotation)
        option = typer.Option(None, *flag_names(name), help=help_text, show_default=shown,
                              **({"exists": True, "dir_okay": False} if kind is Path else {}))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    return params


def settings_from_flags(flags: dict):
    """ServerSettings from the given flags over PROMPTSERVE_* over defaults; a bad value is one line naming
    its flag (exit 2)."""
    from pydantic import ValidationError

    from server.settings import ServerSettings

    values = {k: v for k, v in flags.items() if v is not None and v != []}
    for name in FILE_FIELDS & values.keys():
        values[name] = read_token_file(values[name])
    if "backbone_kwargs" in values:
        values["backbone_kwargs"] = parse_timm_kwargs(values["backbone_kwargs"])
    if "demo_tasks_dir" in values:
        values.setdefault("seed_demo", True)
    try:
        return ServerSettings(**values)
    except ValidationError as e:
        fail("; ".join(f"{flag_names(str(err['loc'][0]))[0].split('/')[0] if err['loc'] else 'settings'}: "
                       f"{err['msg']}" for err in e.errors()))


def serve(**flags) -> None:
    """Serve the classify and task API (uvicorn, or Ray Serve with --ray)."""
    import uvicorn

    from promptserve.backbone import BackboneError
    from promptserve.logs import setup_logging
    from server.app import create_app
    from server.backbone_setup import backbone_spec

    ray, replicas, ray_address = flags.pop("ray"), flags.pop("replicas"), flags.pop("ray_address")
    log_level = flags.pop("log_level")
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    settings = settings_from_flags(flags)
    setup_logging(log_level)
    try:  # fail before binding the port when the backbone cannot possibly load
        backbone_spec(settings)
    except BackboneError as e:
        fail(str(e))
    if ray or replicas is not None or ray_address is not None:
        _serve_on_ray(settings, ray, replicas, ray_address)
        return
    for port in (settings.port, settings.grpc_port):
        _check_port_free(settings.host, port)  # before anything loads: a busy port is one line, not a half start
    app = create_app(settings)
    # log_config=None: uvicorn's loggers keep the one format setup_logging gave the root logger
    from server.http_protocol import guarded_protocol

    http = guarded_protocol(int(settings.max_header_kib * 1024), settings.header_timeout_s)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower(), log_config=None,
                timeout_keep_alive=settings.keep_alive_timeout_s, http=http)


def _check_port_free(host: str, port: int | None) -> None:
    import socket

    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            fail(f"cannot listen on {host}:{port}: {e.strerror or e} (another server there? choose --port / "
                 "--grpc-port)")


_SERVE_ONLY = [
    inspect.Parameter("ray", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--ray", help="Run on Ray Serve: engine replicas routed by task (needs promptserve[ray]; see "
                             "docs/serving.md).")),
    inspect.Parameter("replicas", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        None, help="With --ray: engine replicas.", show_default="2")),
    inspect.Parameter("ray_address", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
        None, help="With --ray: a running Ray cluster (ray://host:10001 or auto).",
        show_default="a local Ray instance")),
    inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
        "info", help=f"{', '.join(LOG_LEVELS)}: the server's and uvicorn's lines, one format.")),
]
serve.__signature__ = inspect.Signature([*_settings_options(), *_SERVE_ONLY])  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in serve.__signature__.parameters.values()}


def _serve_on_ray(settings, ray: bool, replicas: int | None, address: str | None) -> None:
    from pydantic import ValidationError

    if not ray:
        fail("--replicas and --ray-address need --ray")
    if settings.grpc_port is not None:
        fail("--grpc-port is not served with --ray yet (its ingress replicas would share one port): use the Open "
             "Inference Protocol over HTTP (/v2), or serve gRPC without --ray")
    try:
        from server.ray_app import run
        from server.ray_settings import RaySettings
    except ImportError as e:
        fail(f"--ray needs Ray Serve ({e}): pip install 'promptserve[ray]'")
    flags = {k: v for k, v in dict(replicas=replicas, address=address).items() if v is not None}
    try:
        ray_settings = RaySettings(**flags)
    except ValidationError as e:
        fail("; ".join(f"{'.'.join(map(str, err['loc'])) or 'ray'}: {err['msg']}" for err in e.errors()))
    run(settings, ray_settings)


URL_FLAG = typer.Option(None, "--url", help=f"Server URL (env {URL_ENV}).", show_default="http://127.0.0.1:8000")
TOKEN_FILE_FLAG = typer.Option(None, "--token-file", exists=True, dir_okay=False,
                               help="Read the token from this file (keeps it out of the process list).")


def image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory's images (by suffix, recursively, sorted). Missing paths are one line."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            fail(f"{path} does not exist")
    if not found:
        fail(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    return found


def classify(
    images: list[Path] = typer.Argument(..., help="Image files and directories (their images, recursively)."),
    task: str = typer.Option(..., "--task", "-t", help="Task name."),
    url: str = URL_FLAG,
    top_k: int = typer.Option(None, min=1, max=1000, help="Labels per image, 1-1000.",
                              show_default="the server's, 5"),
    token: str = typer.Option(None, help=f"API token when the server sets one (env {API_TOKEN_ENV}); visible in "
                                         "the process list: prefer the env or --token-file.", show_default=False),
    token_file: Path = TOKEN_FILE_FLAG,
    as_json: bool = typer.Option(False, "--json", help="Print the answers as JSON (a list, one per image)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: image, task, version, rank, label, score."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for each request's answer."),
) -> None:
    """Classify images with a task on a running server (any number: sent in requests of the server's limit)."""
    from promptserve.client import Client

    if as_json and as_csv:
        fail("--json and --csv: choose one")
    paths = image_paths(images)
    from promptserve.progress import bar

    answers: list[dict] = []
    with Client(url, read_token_file(token_file) or token, timeout=timeout) as client:
        try:
            with bar(total=len(paths), desc=f"classify {task}", unit="image") as progress:
                for i in range(0, len(paths), CLASSIFY_GROUP):  # groups: the bar moves on a long folder
                    answers += client.classify(task, paths[i:i + CLASSIFY_GROUP], top_k=top_k)
                    progress.update(len(paths[i:i + CLASSIFY_GROUP]))
        except ClientError as e:
            fail(str(e), 1)
    if as_json:
        typer.echo(json.dumps([{"image": str(p), **a} for p, a in zip(paths, answers, strict=True)], indent=2))
    elif as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["image", "task", "version", "rank", "label", "score"])
        for path, answer in zip(paths, answers, strict=True):
            for rank, p in enumerate(answer["predictions"], 1):
                out.writerow([path, answer["task"], answer["version"], rank, p["label"], f"{p['score']:.6f}"])
    else:
        _print_answers(task, paths, answers)


def _print_answers(task: str, paths: list[Path], answers: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    versions = sorted({a["version"][:12] for a in answers})
    table = Table(title=f"{len(answers)} images, task {task} @ {', '.join(versions)}", title_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("label", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("next", overflow="fold")
    for path, answer in zip(paths, answers, strict=True):
        best, *rest = answer["predictions"]
        table.add_row(str(path), best["label"], f"{best['score']:.3f}",
                      ", ".join(f"{p['label']} {p['score']:.2f}" for p in rest[:2]))
    Console().print(table)


ADMIN_TOKEN_FLAG = typer.Option(None, help=f"Admin token (printed by `serve` when none was configured; env "
                                           f"{ADMIN_TOKEN_ENV}); visible in the process list: prefer the env or "
                                           "--token-file.", show_default=False)


def push(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A prompt set (.safetensors)."),
    task: str = typer.Option(..., "--task", "-t", help="Task name to point at this prompt set."),
    url: str = URL_FLAG,
    token: str = ADMIN_TOKEN_FLAG,
    token_file: Path = TOKEN_FILE_FLAG,
    timeout: float = typer.Option(120.0, help="Seconds to wait for the answer."),
) -> None:
    """Upload a prompt set to a running server: validated, stored, and served by the next request.
    (`promptserve tasks push` writes to a registry directly, with no server running.)"""
    record = _admin_call(url, token, token_file, timeout, lambda client: client.push(task, file))
    typer.echo(f"{record['task']} -> {record['version']} ({record['size']} bytes, {len(record['labels'])} labels)")


def rollback(
    task: str = typer.Argument(..., help="The task to roll back."),
    version: str = typer.Argument(..., help="A version from its history: the sha256 or a unique prefix of 6+."),
    url: str = URL_FLAG, token: str = ADMIN_TOKEN_FLAG, token_file: Path = TOKEN_FILE_FLAG,
    timeout: float = typer.Option(60.0, help="Seconds to wait for the answer."),
) -> None:
    """Point a task of a running server back at an earlier version; it serves the next request.
    (`promptserve tasks rollback` edits a registry directly, with no server running.)"""
    record = _admin_call(url, token, token_file, timeout, lambda client: client.rollback(task, version))
    typer.echo(f"{record['task']} -> {record['version']} (rolled back)")


def delete(
    task: str = typer.Argument(..., help="The task to delete, with all its versions."),
    url: str = URL_FLAG, token: str = ADMIN_TOKEN_FLAG, token_file: Path = TOKEN_FILE_FLAG,
    timeout: float = typer.Option(60.0, help="Seconds to wait for the answer."),
) -> None:
    """Delete a task from a running server; its requests answer 404 from then on.
    (`promptserve tasks rm` edits a registry directly, with no server running.)"""
    _admin_call(url, token, token_file, timeout, lambda client: client.delete(task))
    typer.echo(f"{task} deleted")


def _admin_call(url: str, token: str | None, token_file: Path | None, timeout: float, call):
    """One admin call through promptserve.Client, its failure one line."""
    from promptserve.client import Client, resolve_token

    token = resolve_token(read_token_file(token_file) or token)
    if not token:
        fail(f"an admin token is needed: {ADMIN_TOKEN_ENV}, --token-file or --token")
    with Client(url, token, timeout=timeout) as client:
        try:
            return call(client)
        except ClientError as e:
            fail(str(e), 1)


if __name__ == "__main__":  # `python -m server.cli serve ...` without the console script
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for _command in (serve, classify, push, rollback, delete):
        _app.command()(_command)
    _app()
