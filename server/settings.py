"""Server settings: environment variables `PROMPTSERVE_*`, overridden by `promptserve serve` flags.

Every limit that protects the server from a client has a finite default: uploads, image bytes and
pixels, images per request, queue length. Tokens are secrets (never echoed in logs or reprs).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_BACKBONE_FILE = "backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors"
MIB = 1 << 20


def demo_assets_dir() -> Path:
    """The demo backbone and demo tasks: shipped in the wheel as server/demo_assets (pyproject's package-dir),
    else the checkout's assets/ beside this package (a source tree or an editable install), so the defaults
    work from any directory. Neither: the checkout-relative path, whose "not found" names how to build it."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "demo_assets", package.parent / "assets"):
        if (candidate / DEMO_BACKBONE_FILE).is_file():
            return candidate
    return Path("assets")


_DEMO_ASSETS = demo_assets_dir()  # looked up once, at import
DEMO_BACKBONE = str(_DEMO_ASSETS / DEMO_BACKBONE_FILE)
DEMO_TASKS_DIR = str(_DEMO_ASSETS / "tasks")


GRPC_EXTRA_MISSING = "serving gRPC needs grpcio and tritonclient's protocol stubs: pip install 'promptserve[grpc]'"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSERVE_", extra="ignore")

    # ---- the frozen model --------------------------------------------------------------------------
    # the same rules as every other command (promptserve.backbone.load_backbone); flags --backbone,
    # --weights, --pretrained, --random-init, --timm-kwargs
    backbone: str = Field(DEMO_BACKBONE, description=(
        "A project backbone file (written by `promptserve pretrain`; its metadata names the timm model), a timm "
        "model name (with backbone_weights or backbone_pretrained), or `random-tiny`: a small seeded random ViT "
        "for tests and smoke runs, never chosen implicitly."))
    backbone_weights: str | None = Field(None, description=(
        "A local .safetensors/.pth/.bin state dict for a timm model name (flag --weights)."))
    backbone_pretrained: bool = Field(False, description="timm's pretrained weights, downloaded (flag --pretrained).")
    backbone_random_init: bool = Field(False, description="Seeded random weights on purpose (flag --random-init).")
    backbone_kwargs: dict = Field(default_factory=dict, description=(
        "timm.create_model kwargs for a timm model name (JSON in the env; flag --timm-kwargs)."))
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description=(
        "The engine's weights and activations. auto: at start, time the precisions this device runs natively "
        "(bfloat16 on a CPU with AMX or AVX512-BF16 or a GPU of compute capability 8.0+, float16 on a GPU) "
        "against float32 on the registry's tasks and keep the fastest that is >= 1.05x faster and agrees with "
        "float32 on >= 99% of the probe images; otherwise float32 (docs/serving.md)."))
    backend: Literal["auto", "torch", "openvino"] = Field("auto", description=(
        "What runs the forward: torch, or openvino (the same forward compiled by OpenVINO for the CPU; the "
        "[openvino] extra). auto: decided at start with dtype auto's measurement: every precision dtype allows, "
        "on every backend installed for this device, timed against float32 torch; the fastest that is >= 1.05x "
        "faster and agrees with float32 torch on >= 99% of the probe images, else torch (docs/serving.md)."))
    probe_dir: str | None = Field(None, description=(
        "Images (a folder, searched recursively, at most 256) that dtype and backend auto check the candidates "
        "against float32 torch on. Unset: the demo tasks' example images when present, else the fallback is kept."))
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads for the engine; 0 keeps torch's default.")

    # ---- the registry --------------------------------------------------------------------------------
    store: str = Field("./registry", description="A directory (LocalStore) or a redis:// URL (RedisStore).")
    seed_demo: bool = Field(False, description=(
        "When the store has no task for this backbone, seed it from demo_tasks_dir/*.safetensors, or with "
        "generated demo prompt sets when that folder is empty."))
    demo_tasks_dir: str = Field(DEMO_TASKS_DIR, description=(
        "The demo prompt sets (and examples/ for the web page): by default the ones shipped with the package."))
    demo: bool = Field(False, description=(
        "The demo, from any directory: the demo backbone shipped with the package (unless backbone is set) and "
        "a store seeded with its four demo tasks (seed_demo)."))

    # ---- network -------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535, description=(
        "Also serve the Open Inference Protocol over gRPC on this port (the [grpc] extra); unset: HTTP only."))

    # ---- batching ------------------------------------------------------------------------------------
    max_batch: int = Field(32, ge=1, le=4096, description="A batch closes when it holds this many images ...")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="... or this long after its first image queued.")
    queue_limit: int = Field(512, ge=1, description="Images waiting for the engine; beyond it: 503 + Retry-After.")
    decode_threads: int = Field(2, ge=1, le=64, description="Threads that decode and resize images.")

    # ---- resident tasks ------------------------------------------------------------------------------
    resident_max_tasks: int = Field(64, ge=1, description="Tasks kept in the prompt bank (LRU beyond).")
    resident_max_mib: float = Field(512.0, gt=0, description="Prompt-set MiB kept in the bank (LRU beyond).")
    pinned_tasks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Tasks loaded at start and never evicted (comma-separated in the env).")
    preload: bool = Field(True, description="Load the store's tasks at start, up to the resident budget.")

    # ---- request limits ------------------------------------------------------------------------------
    max_upload_mib: float = Field(64.0, gt=0, description="Largest prompt-set upload (413 beyond).")
    max_image_mib: float = Field(10.0, gt=0, description="Largest encoded image (413 beyond).")
    max_image_pixels: int | None = Field(None, ge=1, description=(
        "Most pixels one image may decode to (422 from the header alone; a JPEG decodes at 1/2..1/8 scale, so a "
        "12 MP photo counts 0.19 MP). Unset: 32x the backbone's input side squared, kept within 2048^2..6000x4000."))
    max_request_pixels: int | None = Field(None, ge=1, description=(
        "Pixels all images of one request may decode (413 beyond). Unset: 8 x max_image_pixels."))
    max_pixels_in_flight: int | None = Field(None, ge=1, description=(
        "Pixels the whole server decodes at once; requests wait their turn (fairly). Unset: 2 x max_request_pixels."))
    max_prompt_tokens_per_layer: int | None = Field(None, ge=0, description=(
        "Visual or key/value prompt tokens in one layer of a prompt set (413 beyond). Unset: 2x the backbone's "
        "sequence length."))
    max_prompt_mib: float | None = Field(None, gt=0, description=(
        "Prompt tensors (head excluded) of one prompt set (413 beyond). Unset: what the token limit implies."))
    max_body_mib_in_flight: float = Field(512.0, gt=0, description=(
        "Request-body MiB all requests in progress may hold together (declared or received so far); beyond it "
        "503 + Retry-After (one request alone is always admitted, within its own route limit)."))
    max_images_per_request: int = Field(32, ge=1, le=1024)
    default_top_k: int = Field(5, ge=1)

    # ---- time limits -------------------------------------------------------------------------------
    request_timeout_s: float = Field(30.0, gt=0, description="A classify not answered in this time gets 504.")
    body_timeout_s: float = Field(20.0, gt=0, description="A request body must arrive within this time (408).")
    keep_alive_timeout_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this.")
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "A request's headers must arrive within this time from the connection's start or its previous answer; "
        "else the connection is closed (408 if part of them came)."))
    max_header_kib: float = Field(64.0, gt=0, description=(
        "Header bytes of one request (431 beyond, connection closed)."))
    redis_timeout_s: float = Field(2.0, gt=0, description="Redis connect and command timeout (socket).")
    redis_retry_s: float = Field(5.0, ge=0, description=(
        "How long a Redis call retries a lost or hung connection before the request gets 503."))

    # ---- security ------------------------------------------------------------------------------------
    admin_token: SecretStr | None = Field(None, description=(
        "Bearer token for uploads, rollback and delete. Unset: one is generated at start and printed once."))
    api_token: SecretStr | None = Field(None, description=(
        "When set, every endpoint but /healthz and /readyz needs `Authorization: Bearer` it (or the admin token)."))

    @field_validator("pinned_tasks", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _demo_seeds_the_store(self):
        if self.demo:  # the backbone's default already is the demo backbone; an explicit one is kept
            self.seed_demo = True
        return self

    @field_validator("store")
    @classmethod
    def _redis_store_needs_its_extra(cls, value: str) -> str:
        from prompt_store import REDIS_EXTRA_MISSING, REDIS_SCHEMES

        if value.startswith(REDIS_SCHEMES) and importlib.util.find_spec("redis") is None:
            raise ValueError(REDIS_EXTRA_MISSING)
        return value

    @field_validator("grpc_port")
    @classmethod
    def _grpc_needs_its_extra(cls, value: int | None) -> int | None:
        if value is not None and (importlib.util.find_spec("grpc") is None
                                  or importlib.util.find_spec("tritonclient") is None):
            raise ValueError(GRPC_EXTRA_MISSING)
        return value

    @field_validator("backend")
    @classmethod
    def _openvino_needs_its_extra(cls, value: str) -> str:
        if value == "openvino" and importlib.util.find_spec("openvino") is None:
            from promptserve.backends import OPENVINO_EXTRA_MISSING

            raise ValueError(OPENVINO_EXTRA_MISSING)
        return value

    @field_validator("admin_token", "api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):
        # PROMPTSERVE_ADMIN_TOKEN="" must not become an empty (always-matching) token
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mib * MIB)

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mib * MIB)

    @property
    def max_classify_body_bytes(self) -> int:
        # several images plus multipart framing; each part is checked against max_image_bytes again
        return self.max_image_bytes * self.max_images_per_request + MIB

    @property
    def resident_max_bytes(self) -> int:
        return int(self.resident_max_mib * MIB)
