"""Prompt-KV attention with one switch between implementations, same math on every path.

`prompt_attention(...)` picks the Triton kernel for CUDA inference when Triton is importable and the
reference (plain torch + SDPA) elsewhere. `PROMPTSERVE_ATTENTION=reference|triton|auto` or the `impl`
argument forces one, so tests flip it on the same inputs.
"""

from __future__ import annotations

import os

import torch

from kernels.reference import prompt_attention_reference, prompt_key_mask

IMPLEMENTATIONS = ("auto", "reference", "triton")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install must not take the CPU path down with it
        return False
    return True


def resolve_impl(q: torch.Tensor, impl: str | None = None) -> str:
    impl = impl or os.environ.get("PROMPTSERVE_ATTENTION", "auto")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r} is not one of {IMPLEMENTATIONS}")
    if impl == "auto":
        use_triton = q.is_cuda and not torch.is_grad_enabled() and _triton_available()
        return "triton" if use_triton else "reference"
    return impl


def prompt_attention(q, k, v, prompt_k, prompt_v, task_index, prompt_len, pad_start=None, pad_end=None,
                     scale=None, impl: str | None = None, needs_mask: bool | None = None) -> torch.Tensor:
    """See `kernels.reference.prompt_attention_reference` for the contract; returns (B, N, H * d).
    needs_mask: whether any key is masked, when the caller knows it on the host (the reference then reads
    nothing back from the device); the kernel masks in place and ignores it."""
    if resolve_impl(q, impl) == "triton":
        from kernels.triton_attention import prompt_attention_triton

        return prompt_attention_triton(q, k, v, prompt_k, prompt_v, task_index, prompt_len,
                                       pad_start, pad_end, scale=scale)
    return prompt_attention_reference(q, k, v, prompt_k, prompt_v, task_index, prompt_len,
                                      pad_start, pad_end, scale=scale, needs_mask=needs_mask)


__all__ = ["prompt_attention", "prompt_attention_reference", "prompt_key_mask", "resolve_impl"]
