"""Prompt-KV attention as one Triton kernel (forward only), FlashAttention-2 style.

Same contract as `kernels.reference.prompt_attention_reference`: every sample b attends over
[its task's key/value prompts ; its own tokens minus its padded range]. The reference gathers the bank rows,
concatenates K' = [P_K ; K] and V' = [P_V ; V] and builds a (B, P + N) mask for every layer. Here each program
keeps one block of queries on chip and streams keys/values from two sources without materialising anything:

    1. prompts: bank[task_index[b], h, 0 : prompt_len[task_index[b]]]   (read by task, up to its length)
    2. own keys: k[b, h, 0 : pad_start[b]]  then  k[b, h, pad_end[b] : N]   (the padded range is skipped,
       not masked, so it costs nothing)

with an online softmax in fp32 (running max m_i, running sum l_i, rescaled accumulator), and writes its
(BLOCK_M, d) tile straight into the (B, N, H * d) output that timm's `proj` consumes. Because every key range
is walked from its start while `start < end`, no key block is ever fully masked, so m_i never stays -inf.

Inference only: there is no backward. Training uses the reference (it has autograd).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

CHECKS_ENV = "PROMPTSERVE_KERNEL_CHECKS"  # "1": the launcher also checks index values (see there)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634  # softmax with exp2: exp(x * s) == exp2(x * s * log2(e))


@triton.jit
def _attend_range(acc, m_i, l_i, q, K, V, stride_kn, stride_vn, lo, hi, qk_scale, offs_n, offs_d,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold keys/values [lo, hi) of one (sample, head) into the running softmax state.

    K, V point at key 0 of this (sample, head), head dim contiguous; acc (BLOCK_M, BLOCK_D) fp32, m_i and l_i
    (BLOCK_M,) fp32. Offsets inside a tile are int32 (the launcher checks they fit); the int64 part (sample,
    head, range start) lives in the scalar base pointers, which keeps the pointer tensors cheap in registers."""
    k_ptrs = K + lo * stride_kn + (offs_n[:, None] * stride_kn + offs_d[None, :])  # (BLOCK_N, BLOCK_D)
    v_ptrs = V + lo * stride_vn + (offs_n[:, None] * stride_vn + offs_d[None, :])
    d_ok = offs_d[None, :] < HEAD_DIM
    for start in range(lo, hi, BLOCK_N):
        n_ok = start + offs_n < hi  # (BLOCK_N,)
        k = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok, other=0.0)
        v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: key `start` is always inside [lo, hi)
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, m_i, l_i


@triton.jit
def _prompt_attention_fwd(
    Q, K, V,  # (B, H, N, d) each, any strides but a contiguous head dim
    PK, PV,  # (T, H, P, d) prompt bank (unused when HAS_PROMPTS is False)
    TaskIndex,  # (B,) int: bank row of each sample
    PromptLen,  # (T,) int: valid prompts per task
    PadStart, PadEnd,  # (B,) int: own keys [pad_start, pad_end) are skipped (unused when HAS_PAD is False)
    Out,  # (B, N, H * d), contiguous channels
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_pkt, stride_pkh, stride_pkp,
    stride_pvt, stride_pvh, stride_pvp,
    stride_ob, stride_on,
    H, N, P, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_PROMPTS: tl.constexpr, HAS_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # grid: (cdiv(N, BLOCK_M), B * H); one program = one block of queries of one (sample, head)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # int64 so that b * stride never wraps for big batches
    h = (pid_bh % H).to(tl.int64)
    start_m = pid_m.to(tl.int64) * BLOCK_M

    offs_m = tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows of this block, relative to start_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)  # head dim padded to a power of two, masked by HEAD_DIM
    qo_mask = (start_m + offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]  # (BLOCK_M, BLOCK_D)

    Q_blk = Q + b * stride_qb + h * stride_qh + start_m * stride_qn
    q = tl.load(Q_blk + offs_m[:, None] * stride_qn + offs_d[None, :], mask=qo_mask, other=0.0)  # stays on chip

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    zero = tl.zeros([], dtype=tl.int64)  # range bounds as int64 so base offsets are int64 too

    # source 1: this sample's task prompts, straight from the bank
    if HAS_PROMPTS:
        t = tl.load(TaskIndex + b).to(tl.int64)
        plen = tl.minimum(tl.load(PromptLen + t).to(tl.int64), P)  # the launcher checked it; never read past P
        acc, m_i, l_i = _attend_range(acc, m_i, l_i, q, PK + t * stride_pkt + h * stride_pkh,
                                      PV + t * stride_pvt + h * stride_pvh, stride_pkp, stride_pvp,
                                      zero, plen, qk_scale, offs_n, offs_d, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    # source 2: the sample's own keys, in two ranges around the padded slots
    pad_lo = zero + N
    pad_hi = zero + N
    if HAS_PAD:
        pad_lo = tl.load(PadStart + b).to(tl.int64)
        pad_hi = tl.load(PadEnd + b).to(tl.int64)
    K_bh = K + b * stride_kb + h * stride_kh
    V_bh = V + b * stride_vb + h * stride_vh
    acc, m_i, l_i = _attend_range(acc, m_i, l_i, q, K_bh, V_bh, stride_kn, stride_vn, zero, pad_lo, qk_scale,
                                  offs_n, offs_d, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    acc, m_i, l_i = _attend_range(acc, m_i, l_i, q, K_bh, V_bh, stride_kn, stride_vn, pad_hi, zero + N, qk_scale,
                                  offs_n, offs_d, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    acc = acc / l_i[:, None]
    # out[b, n, h * d + j]: the head-merged layout, so no transpose/reshape copy afterwards
    O_blk = Out + b * stride_ob + start_m * stride_on + h * HEAD_DIM
    tl.store(O_blk + offs_m[:, None] * stride_on + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=qo_mask)


INTERPRETED = type(_prompt_attention_fwd).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1 at import


def _block_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): one config per head dim and dtype, no autotuning (it breaks the
    interpreter). ViT sequences are short (~200-260 tokens), so BLOCK_M = 64 keeps enough programs in flight
    at small batch. fp32 runs its dots on CUDA cores (exact, no tensor cores), so it gets smaller tiles."""
    if dtype == torch.float32:
        return 32, 32, 4
    if head_dim <= 64:
        return 64, 64, 4
    return 64, 32, 4  # d = 128/256: smaller key blocks keep K, V and the accumulator in registers


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"prompt_attention_triton: {msg}")


def _check_tensor(name: str, t: torch.Tensor, shape: tuple, like: torch.Tensor) -> None:
    _check(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _check(tuple(t.shape) == tuple(shape), f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    _check(t.dtype == like.dtype, f"{name} is {t.dtype} but q is {like.dtype}; all of q, k, v and the prompt "
                                  "bank must share one dtype")
    _check(t.device == like.device, f"{name} is on {t.device} but q is on {like.device}")
    _check(t.shape[-1] <= 1 or t.stride(-1) == 1,
           f"{name} must have a contiguous head dim (stride 1), got strides {tuple(t.stride())}")


def _check_index(name: str, t: torch.Tensor | None, length: int, device: torch.device) -> None:
    _check(isinstance(t, torch.Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _check(t.dtype in (torch.int64, torch.int32), f"{name} must be int64 (or int32), got {t.dtype}")
    _check(tuple(t.shape) == (length,), f"{name} has shape {tuple(t.shape)}, expected ({length},)")
    _check(t.device == device, f"{name} is on {t.device} but q is on {device}")


def prompt_attention_triton(
    q: torch.Tensor,  # (B, H, N, d), e.g. timm's qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4) views
    k: torch.Tensor,  # (B, H, N, d)
    v: torch.Tensor,  # (B, H, N, d)
    prompt_k: torch.Tensor | None,  # (T, H, P, d) or None
    prompt_v: torch.Tensor | None,  # (T, H, P, d) or None; may be the same tensor as prompt_k
    task_index: torch.Tensor,  # (B,) int64
    prompt_len: torch.Tensor,  # (T,) int64, each in [0, P]
    pad_start: torch.Tensor | None = None,  # (B,) int64
    pad_end: torch.Tensor | None = None,  # (B,) int64
    scale: float | None = None,
    *,
    out: torch.Tensor | None = None,  # (B, N, H * d) to write into; allocated when None
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton forward of `prompt_attention_reference`; returns (B, N, H * d) in q's dtype."""
    _check(isinstance(q, torch.Tensor) and q.dim() == 4, f"q must be (B, H, N, d), got {getattr(q, 'shape', q)}")
    B, H, N, d = q.shape
    _check(q.dtype in _DTYPES, f"q is {q.dtype}; supported dtypes are float16, bfloat16 and float32")
    _check(1 <= d <= 256, f"head dim {d} is not supported (1..256)")
    _check(q.is_cuda or INTERPRETED, f"tensors are on {q.device}: the Triton kernel needs CUDA, or "
                                     "TRITON_INTERPRET=1 set before triton is imported; use impl='reference' on CPU")
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, (B, H, N, d), q)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, prompt_k, prompt_v)):
        raise RuntimeError("prompt_attention_triton is inference-only (no backward); run it under torch.no_grad() "
                           "or use the reference: kernels.prompt_attention(..., impl='reference')")

    _check((prompt_k is None) == (prompt_v is None), "prompt_k and prompt_v must both be tensors or both be None")
    has_prompts = prompt_k is not None and prompt_k.dim() == 4 and prompt_k.shape[2] > 0
    T, P = 0, 0
    if prompt_k is not None:
        _check(prompt_k.dim() == 4, f"prompt_k must be (T, H, P, d), got {tuple(prompt_k.shape)}")
        T, P = prompt_k.shape[0], prompt_k.shape[2]
        _check_tensor("prompt_k", prompt_k, (T, H, P, d), q)
        _check_tensor("prompt_v", prompt_v, (T, H, P, d), q)
    _check_index("task_index", task_index, B, q.device)
    if has_prompts:
        _check_index("prompt_len", prompt_len, T, q.device)
    _check((pad_start is None) == (pad_end is None), "pad_start and pad_end must both be tensors or both be None")
    if pad_start is not None:
        _check_index("pad_start", pad_start, B, q.device)
        _check_index("pad_end", pad_end, B, q.device)

    # Value checks: a bad index would read outside the bank. They read the values back (a host sync), so they run
    # when PROMPTSERVE_KERNEL_CHECKS=1 (tests, debugging); the engine builds these tensors from its own bank.
    bad = []
    if has_prompts:
        bad += [(task_index < 0) | (task_index >= T), (prompt_len < 0) | (prompt_len > P)]
    if pad_start is not None:
        bad += [(pad_start < 0) | (pad_start > pad_end) | (pad_end > N)]
    if os.environ.get(CHECKS_ENV) == "1" and bad and bool(torch.cat(bad).any()):
        if has_prompts:
            _check(not bool(bad[0].any()),
                   f"task_index must be in [0, {T}) (the bank has T={T} rows), got {task_index.tolist()}")
            _check(not bool(bad[1].any()), f"prompt_len must be in [0, P={P}], got {prompt_len.tolist()}")
        _check(False, f"pad ranges must satisfy 0 <= pad_start <= pad_end <= N={N}, "
                      f"got pad_start={pad_start.tolist()} pad_end={pad_end.tolist()}")

    if out is None:
        out = torch.empty(B, N, H * d, dtype=q.dtype, device=q.device)
    else:
        _check(tuple(out.shape) == (B, N, H * d), f"out has shape {tuple(out.shape)}, expected {(B, N, H * d)}")
        _check(out.dtype == q.dtype and out.device == q.device,
               f"out is {out.dtype} on {out.device}, expected {q.dtype} on {q.device}")
        _check(out.stride(-1) == 1 and 0 not in out.stride()[:2],
               f"out must have contiguous channels and no expanded dims, got strides {tuple(out.stride())}")
    if out.numel() == 0:
        return out

    cfg_m, cfg_n, num_warps = _block_config(d, q.dtype)
    BLOCK_M, BLOCK_N = block_m or cfg_m, block_n or cfg_n
    # (sample, head, task) offsets are int64 in the kernel; offsets inside one tile are int32 (cheaper pointers)
    row_strides = [t.stride(2) for t in (q, k, v)] + ([prompt_k.stride(2), prompt_v.stride(2)] if has_prompts else [])
    _check(max(row_strides + [out.stride(1)]) * max(BLOCK_M, BLOCK_N) < 2**31,
           f"token strides {row_strides + [out.stride(1)]} are too large for int32 offsets within a tile")
    BLOCK_D = max(16, triton.next_power_of_2(d))  # tl.dot wants every dim >= 16
    qk_scale = (d ** -0.5 if scale is None else scale) * _LOG2E
    pk, pv = (prompt_k, prompt_v) if has_prompts else (k, v)  # placeholders, never read
    ps, pe = (pad_start, pad_end) if pad_start is not None else (task_index, task_index)
    plen = prompt_len if has_prompts else task_index
    grid = (triton.cdiv(N, BLOCK_M), B * H)
    _prompt_attention_fwd[grid](
        q, k, v, pk, pv, task_index, plen, ps, pe, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *pk.stride()[:3], *pv.stride()[:3], *out.stride()[:2],
        H, N, P, qk_scale,
        HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        HAS_PROMPTS=has_prompts, HAS_PAD=pad_start is not None,
        # fp32 inputs: exact fp32 products (the contract is 1e-5 against the reference), not TF32
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=2,
    )
    return out
