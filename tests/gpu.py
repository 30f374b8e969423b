"""The one place that decides which tests need a GPU, and where the Triton kernel can run.

The kernel runs compiled on CUDA, or on the CPU in Triton's interpreter when TRITON_INTERPRET=1 was set before
the kernel module was imported (tests/kernels/conftest.py does that on machines without CUDA).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_runnable() -> bool:
    """True when `kernels.triton_attention.prompt_attention_triton` can run here."""
    return importlib.util.find_spec("triton") is not None and (has_cuda() or triton_interpreted())


def kernel_device() -> torch.device:
    """Where kernel tests put their tensors: the GPU when there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if has_cuda() else "cpu")


requires_cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")
requires_kernel = pytest.mark.skipif(
    not kernel_runnable(), reason="the Triton kernel needs triton plus CUDA, or TRITON_INTERPRET=1 on the CPU")
