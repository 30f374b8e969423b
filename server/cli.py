"""`promptserve serve`, `promptserve classify`, `promptserve push`: plain functions that promptserve.cli
registers as commands. Flags override PROMPTSERVE_* environment variables, which override defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

DEFAULT_URL = "http://127.0.0.1:8000"


def serve(
    backbone: str = typer.Option(None, help="A project backbone file, a timm model name (with --pretrained or "
                                            "--weights) or random-tiny. Default: the demo backbone in "
                                            "assets/backbones/."),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's pretrained weights for a timm-name "
                                                                "--backbone (downloaded: needs a network)."),
    weights: str = typer.Option(None, "--weights", "--backbone-weights",
                                help="A local .safetensors/.pth/.bin state dict for a timm-name --backbone."),
    random_init: bool = typer.Option(False, "--random-init", help="Random (seeded) weights on purpose (warns)."),
    timm_kwargs: str = typer.Option(None, help="JSON kwargs for timm.create_model with a timm-name --backbone."),
    store: str = typer.Option(None, help="Registry: a directory (default ./registry) or a redis:// URL."),
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1; 0.0.0.0 exposes the server)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    device: str = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option(None, help="float32, float16 or bfloat16."),
    max_batch: int = typer.Option(None, help="Images per forward, at most."),
    max_wait_ms: float = typer.Option(None, help="How long a batch waits for more images after its first."),
    queue_limit: int = typer.Option(None, help="Queued images before 503 + Retry-After."),
    resident_max_tasks: int = typer.Option(None, help="Tasks kept in the prompt bank (LRU beyond)."),
    resident_max_mib: float = typer.Option(None, help="Prompt-set MiB kept in the bank (LRU beyond)."),
    pin: list[str] = typer.Option(None, help="A task to keep resident (repeatable)."),
    max_upload_mib: float = typer.Option(None, help="Largest prompt-set upload."),
    max_image_mib: float = typer.Option(None, help="Largest encoded image."),
    max_image_pixels: int = typer.Option(None, help="Largest image width*height (default: from the backbone)."),
    max_request_pixels: int = typer.Option(None, help="Pixels one request may decode (default 8 images' worth)."),
    max_prompt_tokens_per_layer: int = typer.Option(None, help="Prompt tokens per layer (default 2x the sequence)."),
    request_timeout_s: float = typer.Option(None, help="Classify deadline in seconds (504 beyond)."),
    body_timeout_s: float = typer.Option(None, help="Seconds a request body may take to arrive (408 beyond)."),
    keep_alive_timeout_s: int = typer.Option(None, help="Seconds an idle keep-alive connection stays open."),
    admin_token_file: Path = typer.Option(None, exists=True, dir_okay=False, help=(
        "Read the admin token from this file (or PROMPTSERVE_ADMIN_TOKEN); never put it on the command line.")),
    api_token_file: Path = typer.Option(None, exists=True, dir_okay=False, help=(
        "Read the API token from this file (or PROMPTSERVE_API_TOKEN).")),
    seed_demo: bool = typer.Option(None, "--seed-demo/--no-seed-demo",
                                   help="Seed a store that has no task for this backbone from assets/tasks "
                                        "(or with generated demo tasks)."),
    seed_from: str = typer.Option(None, help="Seed from this folder of *.safetensors (implies --seed-demo)."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray Serve: engine replicas routed by task "
                                                  "(needs promptserve[ray]; see docs/serving.md)."),
    replicas: int = typer.Option(None, help="With --ray: engine replicas (default 2)."),
    ray_address: str = typer.Option(None, help="With --ray: a running Ray cluster (ray://host:10001 or auto); "
                                               "default: a local Ray instance."),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Serve the classify and task API (uvicorn, or Ray Serve with --ray)."""
    import uvicorn

    from promptserve.backbone import BackboneError
    from promptserve.cli import fail, parse_timm_kwargs
    from server.app import create_app
    from server.loading import backbone_spec
    from server.settings import ServerSettings

    # flags override the PROMPTSERVE_BACKBONE* settings; an absent flag leaves the setting alone
    flags = dict(backbone=backbone, backbone_weights=weights, backbone_pretrained=pretrained or None,
                 backbone_random_init=random_init or None,
                 backbone_kwargs=None if timm_kwargs is None else parse_timm_kwargs("serve", timm_kwargs),
                 store=store, host=host, port=port,
                 device=device, dtype=dtype, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_limit=queue_limit,
                 resident_max_tasks=resident_max_tasks, resident_max_mib=resident_max_mib, pinned_tasks=pin or None,
                 max_upload_mib=max_upload_mib, max_image_mib=max_image_mib, max_image_pixels=max_image_pixels,
                 max_request_pixels=max_request_pixels, max_prompt_tokens_per_layer=max_prompt_tokens_per_layer,
                 request_timeout_s=request_timeout_s, body_timeout_s=body_timeout_s,
                 keep_alive_timeout_s=keep_alive_timeout_s, admin_token=_read_token(admin_token_file),
                 api_token=_read_token(api_token_file),
                 seed_demo=True if seed_from else seed_demo, demo_tasks_dir=seed_from)
    settings = ServerSettings(**{k: v for k, v in flags.items() if v is not None})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # fail before binding the port when the backbone cannot possibly load
        backbone_spec(settings)
    except BackboneError as e:
        fail("serve", str(e))
    if ray or replicas is not None or ray_address is not None:
        _serve_on_ray(settings, ray, replicas, ray_address)
        return
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower(),
                timeout_keep_alive=settings.keep_alive_timeout_s)


def _serve_on_ray(settings, ray: bool, replicas: int | None, address: str | None) -> None:
    from pydantic import ValidationError

    from promptserve.cli import fail

    if not ray:
        fail("serve", "--replicas and --ray-address need --ray")
    try:
        from server.ray_app import run
        from server.ray_settings import RaySettings
    except ImportError as e:
        fail("serve", f"--ray needs Ray Serve ({e}): pip install 'promptserve[ray]'")
    flags = {k: v for k, v in dict(replicas=replicas, address=address).items() if v is not None}
    try:
        ray_settings = RaySettings(**flags)
    except ValidationError as e:
        fail("serve", "; ".join(f"{'.'.join(map(str, err['loc'])) or 'ray'}: {err['msg']}" for err in e.errors()))
    run(settings, ray_settings)


def classify(
    images: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Image files."),
    task: str = typer.Option(..., "--task", "-t", help="Task name."),
    url: str = typer.Option(DEFAULT_URL, envvar="PROMPTSERVE_URL", help="Server URL."),
    top_k: int = typer.Option(5, help="Labels per image."),
    token: str = typer.Option(None, envvar="PROMPTSERVE_API_TOKEN", help=(
        "API token, when the server sets one (visible in the process list: prefer the env or --token-file).")),
    token_file: Path = typer.Option(None, exists=True, dir_okay=False, help="Read the API token from this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the server's JSON answer."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for the answer."),
) -> None:
    """Classify images with a task on a running server."""
    import httpx

    token = _read_token(token_file) or token
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{url.rstrip('/')}/classify/{task}", params={"top_k": top_k}, files=files,
                       headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        _fail(f"cannot reach {url}: {e}")
    if r.status_code != 200:
        _fail_response(r)
    answers = r.json()
    if as_json:
        typer.echo(json.dumps(answers, indent=2))
        return
    for path, answer in zip(images, answers, strict=True):
        best = ", ".join(f"{p['label']} {p['score']:.3f}" for p in answer["predictions"])
        typer.echo(f"{path}\t{task}@{answer['version'][:12]}\t{best}\t({answer['timing_ms']['total']:.1f} ms)")


def push(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A prompt set (.safetensors)."),
    task: str = typer.Option(..., "--task", "-t", help="Task name to point at this prompt set."),
    url: str = typer.Option(DEFAULT_URL, envvar="PROMPTSERVE_URL", help="Server URL."),
    token: str = typer.Option(None, envvar="PROMPTSERVE_ADMIN_TOKEN", help=(
        "Admin token (printed by `serve` when none was configured); visible in the process list: prefer the "
        "env or --token-file.")),
    token_file: Path = typer.Option(None, exists=True, dir_okay=False, help="Read the admin token from this file."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the answer."),
) -> None:
    """Upload a prompt set to a running server: validated, stored, and served by the next request."""
    import httpx

    token = _read_token(token_file) or token
    if not token:
        _fail("an admin token is needed: PROMPTSERVE_ADMIN_TOKEN, --token-file or --token")
    try:
        r = httpx.put(f"{url.rstrip('/')}/tasks/{task}", content=file.read_bytes(), timeout=timeout,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
    except httpx.HTTPError as e:
        _fail(f"cannot reach {url}: {e}")
    if r.status_code != 200:
        _fail_response(r)
    record = r.json()
    typer.echo(f"{record['task']} -> {record['version']} ({record['size']} bytes, {len(record['labels'])} labels)")


def _read_token(path: Path | None) -> str | None:
    """A token file's first line (so it never has to appear in the process list); None without a file."""
    if path is None:
        return None
    words = path.read_text().split()
    if not words:
        _fail(f"token file {path} is empty")
    return words[0]


def _fail_response(r) -> None:
    try:
        body = r.json()
        message = f"{body.get('error', r.status_code)}: {body.get('detail', r.text)}"
    except ValueError:
        message = r.text
    _fail(f"HTTP {r.status_code} {message}")


def _fail(message: str) -> None:
    typer.echo(f"promptserve: {message}", err=True)
    raise typer.Exit(1)


if __name__ == "__main__":  # `python -m server.cli serve ...` without the console script
    _app = typer.Typer(add_completion=False)
    for _command in (serve, classify, push):
        _app.command()(_command)
    _app()
