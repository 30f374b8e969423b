"""What every `promptserve` command shares: the backbone flags, one-line user errors, and `info` (a core-only
command). The console entry point that mounts the other packages' commands is `promptserve_cli`, one floor
above: the core never imports server, training or prompt_store code, by name or by string."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

# ---- the backbone flags: the same on train, eval, info (serve has them too, with its settings behind them) ----
BACKBONE_FLAG = typer.Option(None, "--backbone", help="A project backbone file, a timm model name (with --pretrained "
                             "or --weights; `hf-hub:` names and `.tag` suffixes work), or random-tiny (a seeded "
                             "test ViT).")
PRETRAINED_FLAG = typer.Option(False, "--pretrained", help="timm's pretrained weights for a timm-name --backbone "
                               "(downloaded: needs a network).")
WEIGHTS_FLAG = typer.Option(None, "--weights", help="A local .safetensors/.pth/.bin state dict for a timm-name "
                            "--backbone (offline machines, model-zoo files).")
RANDOM_INIT_FLAG = typer.Option(False, "--random-init", help="Random (seeded) weights on purpose: a warning, "
                                "never a default.")
TIMM_KWARGS_FLAG = typer.Option("{}", "--timm-kwargs", help='JSON kwargs for timm.create_model with a timm-name '
                                '--backbone, e.g. \'{"img_size": 384}\'.')


def fail(message: str, code: int = 2) -> NoReturn:
    """A user mistake: `error: ...` as one line on stderr, no traceback; exit 2 for bad input, 1 otherwise."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_token_file(path: Path | None) -> str | None:
    """A token file's first word (so a token never has to appear in the process list); None without a file."""
    if path is None:
        return None
    try:
        words = path.read_text().split()
    except OSError as e:
        fail(f"cannot read token file {path}: {e.strerror}")
    if not words:
        fail(f"token file {path} is empty")
    return words[0]


def parse_timm_kwargs(text: str | None) -> dict:
    try:
        kwargs = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        fail(f"--timm-kwargs is not JSON ({e}): write e.g. '{{\"img_size\": 384}}'")
    if not isinstance(kwargs, dict):
        fail(f"--timm-kwargs must be a JSON object, e.g. '{{\"img_size\": 384}}', not {text}")
    return kwargs


def backbone_from_flags(backbone: str | None, pretrained: bool = False, weights: str | None = None,
                        random_init: bool = False, timm_kwargs: str | None = "{}",
                        artifact: tuple[str, dict[str, str]] | None = None):
    """The backbone the flags name or, without --backbone, the one `artifact` (path, metadata) records and
    fingerprints. Any problem is one line on stderr (exit 2); a random-weights warning is one line too."""
    import warnings

    from promptserve.backbone import BackboneError, load_backbone, load_recorded_backbone

    kwargs = parse_timm_kwargs(timm_kwargs)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if backbone:
                bb = load_backbone(backbone, weights=weights, pretrained=pretrained, random_init=random_init,
                                   timm_kwargs=kwargs)
            elif pretrained or weights or random_init or kwargs:
                raise BackboneError("--pretrained, --weights, --random-init and --timm-kwargs go with --backbone NAME")
            elif artifact is not None:
                path, meta = artifact
                bb = load_recorded_backbone(meta.get("backbone", ""), meta.get("backbone_fingerprint", ""), path)
            else:
                raise BackboneError("--backbone is needed: a project backbone file, a timm model name with "
                                    "--pretrained or --weights FILE, or random-tiny")
    except BackboneError as e:
        fail(str(e))
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    return bb


def artifact_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a prompt set or `full` artifact (header only), or one line saying why not."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        fail(f"cannot read {path} as a safetensors artifact: {e}")


def info(prompt_set: str = typer.Option(None, "--task", help="Check this prompt set against the backbone; "
                                        "without --backbone, build the backbone it records."),
         backbone: str = BACKBONE_FLAG, pretrained: bool = PRETRAINED_FLAG, weights: str = WEIGHTS_FLAG,
         random_init: bool = RANDOM_INIT_FLAG, timm_kwargs: str = TIMM_KWARGS_FLAG):
    """Print a backbone's dims, data config and fingerprint (and validate a prompt set against it)."""
    from promptserve import PromptSet, PromptSetError

    artifact = (prompt_set, artifact_metadata(prompt_set)) if prompt_set else None
    bb = backbone_from_flags(backbone, pretrained, weights, random_init, timm_kwargs, artifact)
    typer.echo(f"backbone     {bb.source.describe()}\nfingerprint  {bb.fingerprint}\nlayers {bb.num_layers}  "
               f"dim {bb.embed_dim}  heads {bb.num_heads}  params {bb.num_params:,}\ndata         {bb.data_config}")
    if prompt_set:
        try:
            ps = PromptSet.load(prompt_set)
            ps.validate(bb)
        except PromptSetError as e:
            typer.echo(f"prompt set   INVALID ({e.reason}): {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"prompt set   ok: {ps.method}, {ps.num_classes} classes, {ps.num_prompt_params():,} prompt params, "
                   f"version {ps.version[:12]}")

