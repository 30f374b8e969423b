"""What runs the prompted forward once the bank has gathered a batch: `torch` (PromptedViT.forward_batch, the
reference, on any device) or `openvino` (the same forward compiled by OpenVINO for the CPU, the [openvino]
extra; promptserve/openvino_backend.py).

A backend owns one PromptedViT, whose bank holds the resident tasks, and turns (images, PromptBatch) into
logits. The gather stays with the caller, so a batch's versions and labels come from the same gather as its
prompts, whatever runs the forward.
"""

from __future__ import annotations

import importlib.util

import torch

from promptserve.backbone import Backbone
from promptserve.bank import PromptBatch
from promptserve.model import PromptedViT

BACKENDS = ("torch", "openvino")
OPENVINO_EXTRA_MISSING = "the openvino backend needs OpenVINO: pip install 'promptserve[openvino]'"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def backends_for(device: torch.device) -> list[str]:
    """The backends that can run on `device`: torch everywhere, openvino on a CPU where it is installed (its GPU
    plugin is for Intel GPUs, not CUDA)."""
    return ["torch", *(["openvino"] if device.type == "cpu" and openvino_installed() else [])]


class Backend:
    """Runs `model`'s forward in `dtype`; subclasses say how."""

    name = ""

    def __init__(self, model: PromptedViT, dtype: torch.dtype):
        self.model, self.dtype = model, dtype

    def classify(self, images: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        """images (B, 3, S, S) and the bank's batch for them -> logits (B, C_max), -inf beyond each sample's
        own class count (PromptedViT.forward_batch's contract)."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        """As PromptedViT.forward: one resident task name per image -> logits."""
        return self.classify(images, self.model.bank.gather(tasks))


class TorchBackend(Backend):
    name = "torch"

    def classify(self, images: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.forward_batch(images, batch)


def open_backend(name: str, backbone: Backbone, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, *, own_weights: bool = False) -> Backend:
    """A backend running `backbone` in `dtype` on `device`. torch casts the weights to `dtype` (in place when
    `own_weights`, as the engine does with its backbone, else on a copy, so the caller's stays float32);
    openvino compiles the float32 weights and runs `dtype` through its own precision hint."""
    if name == "torch":
        half = dtype != torch.float32
        return TorchBackend(PromptedViT(backbone.clone() if half and not own_weights else backbone, device=device,
                                        dtype=dtype), dtype)
    if name == "openvino":
        if torch.device(device or "cpu").type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU, not {device}: use device cpu or backend torch")
        if not openvino_installed():
            raise ValueError(OPENVINO_EXTRA_MISSING)
        from promptserve.openvino_backend import OpenVINOBackend

        # the compiled graph runs the reference attention (the Triton kernel is CUDA's)
        return OpenVINOBackend(PromptedViT(backbone, device="cpu", dtype=torch.float32,
                                           attention_impl="reference"), dtype)
    raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)} (auto is decided before one is opened)")
