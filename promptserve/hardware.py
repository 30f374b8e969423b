"""What the hardware runs natively: the precisions worth timing on this device (the server's dtype auto,
distillation's bf16 autocast). A CPU without AMX or AVX512-BF16 has no native bf16 matmuls: there bf16 runs at
0.07-0.13x of float32 (measured on an AVX2-only AMD EPYC; docs/performance.md keeps the 0.13x of
benchmarks/serving_precision.py), so it is never a candidate."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 in /proc/cpuinfo (False where it cannot be read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def native_dtypes(device: torch.device) -> list[str]:
    """float32 first, then the half precisions this device runs natively: bf16 on a CPU with AMX/AVX512-BF16
    or a CUDA GPU of compute capability 8.0+ (Ampere on), fp16 on any CUDA GPU."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return ["float32", *(["bfloat16"] if major >= 8 else []), "float16"]
    if device.type == "cpu":
        return ["float32", *(["bfloat16"] if cpu_has_native_bf16() else [])]
    return ["float32"]


def bf16_is_native(device: torch.device) -> bool:
    """bf16 autocast pays off here (training's `amp`): a CPU with AMX/AVX512-BF16, a CUDA GPU of sm80+."""
    return "bfloat16" in native_dtypes(device)
