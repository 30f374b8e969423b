"""Plain-torch prompt-KV attention: the specification, the CPU path and the training path (autograd).

Every sample b attends over [its task's key/value prompts ; its own tokens]. The prompts come from a bank
shared by all resident tasks, `prompt_k[task_index[b], :, :prompt_len[task_index[b]]]`; the sample's own
keys in [pad_start[b], pad_end[b]) are padded visual-prompt slots and are masked out. Queries are never
prompted, so the output keeps the sample's own N positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_key_mask(task_index: torch.Tensor, prompt_len: torch.Tensor, num_prompts: int, seq_len: int,
                    pad_start: torch.Tensor, pad_end: torch.Tensor) -> torch.Tensor:
    """(B, P + N) bool, True where a key takes part: the task's first prompt_len prompts and the sample's
    own tokens outside its padded range."""
    device = task_index.device
    prompt_ok = torch.arange(num_prompts, device=device) < prompt_len.index_select(0, task_index)[:, None]
    pos = torch.arange(seq_len, device=device)
    own_ok = (pos < pad_start[:, None]) | (pos >= pad_end[:, None])
    return torch.cat([prompt_ok, own_ok], dim=1)


def prompt_attention_reference(
    q: torch.Tensor,  # (B, H, N, d)
    k: torch.Tensor,  # (B, H, N, d)
    v: torch.Tensor,  # (B, H, N, d)
    prompt_k: torch.Tensor | None,  # (T, H, P, d) or None: no key/value prompts anywhere
    prompt_v: torch.Tensor | None,  # (T, H, P, d); may be the same tensor as prompt_k (shared K/V)
    task_index: torch.Tensor,  # (B,) int64, row of the bank for each sample
    prompt_len: torch.Tensor,  # (T,) int64, valid prompts per task (<= P)
    pad_start: torch.Tensor | None = None,  # (B,) int64: own keys [pad_start, pad_end) are masked
    pad_end: torch.Tensor | None = None,  # (B,) int64
    scale: float | None = None,
    needs_mask: bool | None = None,  # known on the host: skips reading it back from the device (a sync)
) -> torch.Tensor:
    """Returns (B, N, H * d), laid out as timm's Attention lays out its output before `proj`."""
    B, H, N, d = q.shape
    P = 0 if prompt_k is None else prompt_k.shape[2]
    if P and prompt_k is not None and prompt_v is not None:
        k = torch.cat([prompt_k.index_select(0, task_index), k], dim=2)  # (B, H, P + N, d)
        v = torch.cat([prompt_v.index_select(0, task_index), v], dim=2)
    mask = None
    if pad_start is None or pad_end is None:
        if (pad_start is None) != (pad_end is None):
            raise ValueError("pad_start and pad_end must both be tensors or both be None")
        pad_start = pad_end = torch.zeros(B, dtype=torch.long, device=q.device)
    if needs_mask is None:
        needs_mask = bool((pad_end > pad_start).any()) or bool(
            P and (prompt_len.index_select(0, task_index) < P).any())
    if needs_mask:
        mask = prompt_key_mask(task_index, prompt_len, P, N, pad_start, pad_end)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, H, N, d)
    return out.transpose(1, 2).reshape(B, N, H * d)
