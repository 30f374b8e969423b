"""Backbone: a frozen, eval-mode timm VisionTransformer, its dims, data config and fingerprint; and the one
loader every entry point uses (`train`, `eval`, `info`, `serve`, the Python API).

The loader's rules (`load_backbone`):
    a project backbone file      its metadata names the timm model and kwargs (`promptserve pretrain` writes it)
    a timm name + pretrained     timm's own pretrained loading: the hub, `hf-hub:` names, `.tag` suffixes
    a timm name + weights=FILE   a local .safetensors/.pth/.pt/.bin state dict, through timm's pretrained machinery
    `random-tiny`                a small seeded random ViT for tests and smoke runs
    a timm name + random_init    seeded random weights, with a warning
Anything else that would be random is refused: a prompt set trained or served on random weights answers
confidently and wrongly. The fingerprint is a hash of the frozen weights and the shape-changing config; the
spec (where the weights came from) is recorded next to it in every artifact, so `eval` and `info` rebuild
the backbone from the artifact alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:  # timm is imported where a backbone is built: `import promptserve` stays light
    from timm.models.vision_transformer import Attention, VisionTransformer

# timm kwargs that change the model's shapes or math; they identify the backbone next to its weights
SHAPE_KWARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "class_token", "reg_tokens", "global_pool", "no_embed_class", "pre_norm", "fc_norm",
                "num_classes", "qk_norm", "init_values")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
RANDOM_TINY = "random-tiny"
# small enough for fast CPU tests, a real ViT in every other respect
RANDOM_TINY_KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, num_classes=10)
RANDOM_SEED = 0  # random weights are seeded: every process (replicas, eval after train) builds the same ones
# where a backbone's weights came from (the `source` of its spec)
PROJECT_FILE, TIMM_PRETRAINED, WEIGHTS_FILE = "project-file", "timm-pretrained", "weights-file"
RANDOM_INIT, UNRECORDED = "random-init", "unrecorded"
HOW_TO_GET_WEIGHTS = ("give --pretrained (timm's weights from the hub, needs a network) or --weights FILE (a local "
                      ".safetensors/.pth/.bin state dict, e.g. copied from a model zoo); --random-init trains on "
                      f"random weights on purpose, and --backbone {RANDOM_TINY} is a small seeded test ViT")
DEMO_BACKBONE_HINT = ("the demo backbone is built with `promptserve pretrain` then `promptserve distill` "
                      "(see assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.md)")
RETIRED_DIR = "retired"  # a replaced demo backbone moves to assets/backbones/retired/: its prompt sets still load


class BackboneError(ValueError):
    """A backbone promptserve cannot build or prompt; the message says why and what would work."""


class RandomWeightsWarning(UserWarning):
    """The backbone's weights are random because they were asked for (`random_init=True`)."""


@dataclass(frozen=True)
class DataConfig:
    input_size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class Backbone:
    """Wrap a timm ViT; all parameters frozen (requires_grad False) and the model in eval mode."""

    def __init__(self, model: nn.Module, name: str, timm_kwargs: dict | None = None,
                 source: BackboneSpec | None = None):
        from timm.models.vision_transformer import Attention, Block, VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise BackboneError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; promptserve "
                                "prompts ViTs only for now (e.g. vit_tiny_patch16_224, vit_base_patch16_224)")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise BackboneError(f"{name}: block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; "
                                    "only timm's standard Block/Attention are supported")
            if blk.attn.gate is not None:
                raise BackboneError(f"{name}: gated attention is not supported")
        if model.attn_pool is not None:
            raise BackboneError(f"{name}: attention-pool heads (global_pool='map') are not supported")
        if getattr(model, "dynamic_img_size", False):
            raise BackboneError(f"{name}: dynamic_img_size is not supported; fix the input size")
        self.model: VisionTransformer = model.eval().requires_grad_(False)
        self.name: str = name
        self.timm_kwargs: dict = dict(timm_kwargs or {})
        # where the weights came from (recorded in artifacts); a model handed in directly has no record
        self.source: BackboneSpec = source or BackboneSpec(name, UNRECORDED, "", self.timm_kwargs)

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def from_timm(cls, name: str, pretrained: bool = False, weights: str | Path | None = None,
                  **timm_kwargs) -> Backbone:
        """The low-level constructor: `weights` is a local state dict (.safetensors/.pth/.pt/.bin) loaded
        through timm's own pretrained machinery; `pretrained=True` is timm's hub download. With neither the
        weights are timm's random init (tests, speed checks): users go through `load_backbone`, which
        refuses implicit random weights."""
        if weights is not None:
            if not Path(weights).is_file():
                raise BackboneError(f"weights file {weights} does not exist")
            source = BackboneSpec(name, WEIGHTS_FILE, str(weights), timm_kwargs)
        else:  # random here follows the caller's RNG (tests seed it), so it cannot be rebuilt: not recorded
            source = BackboneSpec(name, TIMM_PRETRAINED if pretrained else UNRECORDED, "", timm_kwargs)
        return _timm_backbone(source)

    @classmethod
    def from_file(cls, path: str | Path) -> Backbone:
        """A project backbone file (written by `promptserve pretrain`): its metadata names the timm model."""
        return build_backbone(resolve_backbone(str(path)))

    # ---- dims ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def num_heads(self) -> int:
        return cast("Attention", self.model.blocks[0].attn).num_heads

    @property
    def head_dim(self) -> int:
        return cast("Attention", self.model.blocks[0].attn).head_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.model.num_prefix_tokens

    @property
    def num_patches(self) -> int:
        return self.model.patch_embed.num_patches

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @property
    def pooling(self) -> str:
        """'avg' (mean of patch tokens) or 'token' (CLS): what the final-norm features are pooled with."""
        return "avg" if self.model.global_pool == "avg" else "token"

    @cached_property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @cached_property
    def data_config(self) -> DataConfig:
        import timm.data

        cfg = timm.data.resolve_model_data_config(self.model)
        # timm's pretrained_cfg keeps the original input size (224) when img_size is overridden: the
        # patch embedding knows the size the model actually takes
        size = self.model.patch_embed.img_size[0]
        return DataConfig(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))

    @property
    def display_name(self) -> str:
        """What to call this backbone to a person: a project file by its name (the timm architecture alone says
        nothing of the weights), a timm model by its name; the input size and depth when they are not the
        architecture's own."""
        name = {PROJECT_FILE: Path(self.source.path).stem, RANDOM_TINY: RANDOM_TINY}.get(self.source.source, self.name)
        parts = ([self.name] if name != self.name else []) + [
            f"{k} {v}" for k, v in self.timm_kwargs.items() if k in ("img_size", "patch_size", "depth")]
        return f"{name} ({', '.join(parts)})" if parts else name

    @property
    def spec(self) -> str:
        """The `backbone` metadata string: name with pretrained tag, kwargs and where the weights came from."""
        return self.source.to_json()

    @cached_property
    def shape_spec(self) -> str:
        """Architecture and the kwargs that change shapes, hashed into the fingerprint. The architecture has no
        pretrained tag, so the same weights give the same fingerprint however they were loaded."""
        arch = (getattr(self.model, "pretrained_cfg", None) or {}).get("architecture") or self.name
        kwargs = {k: v for k, v in sorted(self.timm_kwargs.items()) if k in SHAPE_KWARGS}
        return json.dumps({"name": arch, **kwargs}, sort_keys=True)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the shape config and every frozen tensor (name, dtype, shape, float32 bytes)."""
        h = hashlib.sha256(self.shape_spec.encode())
        for key, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{key}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def clone(self) -> Backbone:
        """A copy with its own weights, for another dtype (casts are in place); it keeps the fingerprint of
        the weights as trained, which prompt sets are pinned to."""
        self.fingerprint  # noqa: B018 (cached property, copied along)
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        return twin

    def own_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's own classifier (C, D), (C,), e.g. to check prompted == plain timm logits."""
        head = self.model.head
        if not isinstance(head, nn.Linear):
            raise BackboneError(f"{self.name} has no linear classifier head (num_classes=0?)")
        return head.weight.detach().clone(), head.bias.detach().clone()


# ---- the spec: what a backbone is built from, and what artifacts record ---------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    """A resolved `--backbone` (+ `--pretrained/--weights/--random-init/--timm-kwargs`); its JSON is the
    `backbone` metadata of every artifact, enough to rebuild the backbone without flags."""

    name: str  # timm name, with its pretrained tag or hf-hub: prefix when it has one
    source: str  # project-file | timm-pretrained | weights-file | random-tiny | random-init | unrecorded
    path: str = ""  # the project file or the weights file
    timm_kwargs: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackboneSpec:
        try:
            record = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise BackboneError(f"backbone metadata is not JSON: {text[:100]!r}") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("name", "source")):
            raise BackboneError(f"backbone metadata needs a timm name and a source: {text[:100]!r}")
        return cls(record["name"], record["source"], str(record.get("path") or ""),
                   dict(record.get("timm_kwargs") or {}))

    def describe(self) -> str:
        kwargs = f" {json.dumps(self.timm_kwargs, sort_keys=True)}" if self.timm_kwargs else ""
        return {PROJECT_FILE: f"backbone file {self.path}",
                TIMM_PRETRAINED: f"{self.name}{kwargs} with timm's pretrained weights",
                WEIGHTS_FILE: f"{self.name}{kwargs} with weights {self.path}",
                RANDOM_TINY: RANDOM_TINY,
                RANDOM_INIT: f"{self.name}{kwargs} with seeded random weights (--random-init)",
                }.get(self.source, f"{self.name}{kwargs} (where its weights came from is not recorded)")

    def flags(self) -> str:
        """The command-line flags that rebuild this backbone."""
        import shlex

        if self.source == PROJECT_FILE:
            return f"--backbone {shlex.quote(self.path)}"
        if self.source == RANDOM_TINY:
            return f"--backbone {RANDOM_TINY}"
        how = {TIMM_PRETRAINED: " --pretrained", WEIGHTS_FILE: f" --weights {shlex.quote(self.path)}",
               RANDOM_INIT: " --random-init"}.get(self.source, " --weights FILE")
        kwargs = f" --timm-kwargs {shlex.quote(json.dumps(self.timm_kwargs))}" if self.timm_kwargs else ""
        return f"--backbone {shlex.quote(self.name)}{how}{kwargs}"


def describe_backbone(record: str) -> str:
    """A human line for a `backbone` metadata string (which may come from a client): never raises."""
    try:
        return BackboneSpec.from_json(record).describe()[:300]
    except BackboneError:
        return f"an unrecognised backbone record {record[:80]!r}" if record else "an unrecorded backbone"


# ---- the loader -----------------------------------------------------------------------------------------
def resolve_backbone(spec: str, *, weights: str | Path | None = None, pretrained: bool = False,
                     random_init: bool = False, timm_kwargs: dict | None = None) -> BackboneSpec:
    """Apply the loader's rules without building anything (cheap: `serve` checks before it binds a port).
    Raises BackboneError with what to pass instead."""
    kwargs = dict(timm_kwargs or {})
    asked = [flag for flag, on in (("--pretrained", pretrained), ("--weights", weights is not None),
                                   ("--random-init", random_init)) if on]
    if len(asked) > 1:
        raise BackboneError(f"{' and '.join(asked)} are alternatives: give one")
    extra = asked + (["--timm-kwargs"] if kwargs else [])
    if spec == RANDOM_TINY:
        if extra:
            raise BackboneError(f"{RANDOM_TINY} is a fixed seeded test ViT: drop {', '.join(extra)}")
        return BackboneSpec("vit_tiny_patch16_224", RANDOM_TINY, "", dict(RANDOM_TINY_KWARGS))
    path = Path(spec)
    if path.suffix in WEIGHT_SUFFIXES or path.is_file() or ("/" in spec and not spec.startswith("hf-hub:")):
        if not path.is_file():
            raise BackboneError(f"backbone file {spec} does not exist: pass a project backbone file, a timm model "
                                f"name with --pretrained or --weights FILE, or {RANDOM_TINY}; {DEMO_BACKBONE_HINT}")
        meta = _project_file_metadata(path)
        if extra:
            raise BackboneError(f"{spec} is a backbone file that names its own model and weights: drop "
                                f"{', '.join(extra)} (or pass the timm name as --backbone, this file as --weights)")
        try:
            kwargs = json.loads(meta.get("timm_kwargs", "{}"))
        except json.JSONDecodeError:
            raise BackboneError(f"{spec}: metadata 'timm_kwargs' is not JSON") from None
        return BackboneSpec(meta["timm_name"], PROJECT_FILE, spec, kwargs)
    _check_timm_name(spec)
    if not asked:
        raise BackboneError(f"backbone {spec!r} is a timm model name without weights: {HOW_TO_GET_WEIGHTS}. "
                            "Random weights are never used implicitly")
    if weights is not None and not Path(weights).is_file():
        raise BackboneError(f"--weights {weights} does not exist")
    source = TIMM_PRETRAINED if pretrained else RANDOM_INIT if random_init else WEIGHTS_FILE
    return BackboneSpec(spec, source, "" if weights is None else str(weights), kwargs)


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Build what `resolve_backbone` resolved (or an artifact recorded). Random weights are seeded, so every
    process builds the same ones (and the global RNG is left alone)."""
    if spec.source == UNRECORDED:
        raise BackboneError(f"{spec.describe()}: pass --backbone with {HOW_TO_GET_WEIGHTS}")
    if spec.path and not Path(spec.path).is_file():
        raise BackboneError(f"{spec.describe()}: {spec.path} does not exist")
    if spec.source not in (RANDOM_TINY, RANDOM_INIT):
        return _timm_backbone(spec)
    if spec.source == RANDOM_INIT:
        warnings.warn(f"backbone {spec.name}: random weights (--random-init). Prompts trained on them learn "
                      "nothing a real backbone would use", RandomWeightsWarning, stacklevel=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _timm_backbone(spec)


def load_backbone(spec: str, *, weights: str | Path | None = None, pretrained: bool = False,
                  random_init: bool = False, timm_kwargs: dict | None = None) -> Backbone:
    """The one way `--backbone` (+ flags) becomes a frozen Backbone; the rules are in the module docstring."""
    return build_backbone(resolve_backbone(spec, weights=weights, pretrained=pretrained, random_init=random_init,
                                           timm_kwargs=timm_kwargs))


def load_recorded_backbone(record: str, fingerprint: str, artifact: str = "the artifact") -> Backbone:
    """Rebuild the backbone an artifact records (its `backbone` metadata) and check its fingerprint."""
    spec = BackboneSpec.from_json(record)
    redo = f"pass {spec.flags()} with the backbone it was trained on (fingerprint {fingerprint[:12]})"
    if spec.source == UNRECORDED:
        raise BackboneError(f"{artifact} was trained on {spec.describe()}: {redo}")
    if spec.path and not Path(spec.path).is_file():
        retired = Path(spec.path).parent / RETIRED_DIR / Path(spec.path).name
        if retired.is_file():  # the demo backbone it was trained on was replaced since; the fingerprint still guards
            return load_recorded_backbone(replace(spec, path=str(retired)).to_json(), fingerprint, artifact)
        raise BackboneError(f"{artifact} was trained on {spec.describe()}, which is not here: pass --backbone "
                            f"(and --weights) with where that file is now (fingerprint {fingerprint[:12]})")
    backbone = build_backbone(spec)
    if fingerprint and backbone.fingerprint != fingerprint:
        raise BackboneError(f"{artifact} was trained on {spec.describe()} with fingerprint {fingerprint[:12]}, but "
                            f"it now has {backbone.fingerprint[:12]} (other weights?): {redo}")
    return backbone


def random_tiny_backbone() -> Backbone:
    """The `random-tiny` test backbone: the same weights (and fingerprint) in every process."""
    return load_backbone(RANDOM_TINY)


def _timm_backbone(spec: BackboneSpec) -> Backbone:
    """timm.create_model, with a weights file loaded by timm's own pretrained machinery (its checkpoint filter
    adapts e.g. position embeddings to another img_size), and every failure turned into one clear line."""
    import timm

    kwargs = dict(spec.timm_kwargs)
    from_file = spec.source in (PROJECT_FILE, WEIGHTS_FILE)
    if from_file:
        overlay = {"file": str(spec.path), "source": ""}  # source "": a file wins over an hf-hub: name's hub
        if "num_classes" in kwargs:  # else timm drops a checkpoint head whose size differs from its default
            overlay["num_classes"] = kwargs["num_classes"]
        kwargs["pretrained_cfg_overlay"] = overlay
    if spec.source == TIMM_PRETRAINED and not _hub_reachable():
        raise BackboneError(f"timm's pretrained weights for {spec.name} come from huggingface.co, which cannot be "
                            f"reached from here (within {HUB_PROBE_S:g} s): offline, copy the weights file here and "
                            "pass --weights FILE")
    try:
        model = timm.create_model(spec.name, pretrained=from_file or spec.source == TIMM_PRETRAINED, **kwargs)
    except Exception as e:  # timm, torch and the hub raise many types; the user needs one line either way
        first = " ".join(str(e).split())[:400] or type(e).__name__  # torch's key lists span many lines
        if spec.source == TIMM_PRETRAINED:
            raise BackboneError(f"could not get timm's pretrained weights for {spec.name} ({first}): offline, copy "
                                "the weights file here and pass --weights FILE") from None
        what = f"{spec.path} into " if from_file else ""
        raise BackboneError(f"could not load {what}timm model {spec.name} {json.dumps(spec.timm_kwargs)}: {first}. "
                            "Check the model name, its pretrained tag and --timm-kwargs (e.g. num_classes, "
                            "img_size) against the file") from None
    name = spec.name
    tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag")
    if spec.source == TIMM_PRETRAINED and tag and "." not in name and ":" not in name:
        name = f"{name}.{tag}"  # record the weights actually loaded, even if timm's default tag changes later
    return Backbone(model, name, spec.timm_kwargs, source=BackboneSpec(name, spec.source, spec.path, spec.timm_kwargs))


HUB_PROBE_S = 3.0


def _hub_reachable(host: str = "huggingface.co", port: int = 443) -> bool:
    """Whether the model hub answers a TCP connect within HUB_PROBE_S (name lookup included, in a thread: a
    resolver with no network can hang far longer). Offline, the hub client's own retries take about 55 s to fail."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=HUB_PROBE_S):
            return True

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(connect).result(timeout=HUB_PROBE_S)
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


def _project_file_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    not_project = (f"{path} is not a project backbone file (no timm_name metadata): for a state dict from a model "
                   "zoo, pass the timm model name as --backbone and this file as --weights")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        raise BackboneError(not_project) from None
    if "timm_name" not in meta:
        raise BackboneError(not_project)
    return meta


def _check_timm_name(name: str) -> None:
    import difflib

    import timm

    if name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise BackboneError(f"backbone {name!r} is neither a file, nor a timm model name{hint}, nor {RANDOM_TINY}")
