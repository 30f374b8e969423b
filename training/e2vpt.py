"""E2VPT pruning: importance scores from mask gradients, token- then segment-wise pruning, rewinding.

Stage 1 trains visual + key-value prompts + head with token masks rho_i (M_i,) and segment masks
(M_i, R) multiplied into the visual prompts (all ones, so the forward is unchanged). Importance, two rules:
- `abs` (the paper, after "Are Sixteen Heads Really Better than One?"): S = E |dL/drho|, the mask
  gradients accumulated after every backward of stage 1 (the expectation is over batches of the mean
  loss: per-example gradients would cost a backward per image).
- `signed` (the official code): S = E[dL/drho], the signed mean gradient from ONE extra pass over the
  training data after stage 1 (no optimizer step).
Either way the LOWEST scores are pruned.

Token-wise pruning removes round(token_prune * M_i) lowest-scoring tokens of every layer. Segment-wise
pruning then zeroes segments of the k_i kept tokens: `global` zeroes the round(segment_prune * k_i * R)
lowest of the layer; `per-token` (the official code) zeroes the round(segment_prune * R) lowest of every
token, keeping at least `min_segments_kept`. A token left with no segment is pruned as a token: a served
prompt set never carries an all-zero token. Rewinding resets the kept prompts, the key-value prompts and
the head to their initial values and retrains them with the same schedule; pruned tokens are REMOVED from
the sequence (not kept as zero vectors as in the official code), so what is trained is exactly what is
served.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from promptserve.preprocess import normalise
from training.methods import PromptParams
from training.progress import bar


class Importance:
    """Accumulates mask gradients (|g| or signed g) of a with_masks PromptParams after every backward."""

    def __init__(self, params: PromptParams, signed: bool = False):
        self.params, self.signed, self.batches = params, signed, 0
        self.token = {i: torch.zeros_like(rho) for i, (rho, _) in params.masks.items()}  # {i: (M_i,)}
        self.segment = {i: torch.zeros_like(seg) for i, (_, seg) in params.masks.items()}  # {i: (M_i, R)}

    def __call__(self) -> None:
        for i, (rho, seg) in self.params.masks.items():
            for acc, mask in ((self.token[i], rho), (self.segment[i], seg)):
                g = mask.grad if mask.grad is not None else torch.zeros_like(mask)
                acc += g if self.signed else g.abs()
                mask.grad = None
        self.batches += 1

    def scores(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        n = max(1, self.batches)
        return ({i: t / n for i, t in self.token.items()}, {i: t / n for i, t in self.segment.items()})


def one_pass_importance(forward, params: PromptParams, images: np.ndarray, labels: np.ndarray, batch_size: int,
                        progress: bool = True) -> Importance:
    """The official rule: signed mean dL/drho over one pass of the training data after stage 1.
    Only the masks' gradients are read; prompt gradients are dropped and no optimizer steps."""
    scorer = Importance(params, signed=True)
    y_all = torch.as_tensor(labels)
    for start in bar(range(0, len(labels), batch_size), desc="importance pass", enabled=progress):
        x = normalise(images[start:start + batch_size], forward.data_config)
        loss = F.cross_entropy(forward(x), y_all[start:start + batch_size])
        params.zero_grad(set_to_none=True)
        loss.backward()
        scorer()
    params.zero_grad(set_to_none=True)
    return scorer


@dataclass
class Pruning:
    """keep {layer: sorted kept token indices (k_i,)}; seg_keep {layer: (k_i, R) bool, True = kept};
    emptied: tokens removed because every one of their segments was pruned."""

    token_prune: float
    segment_prune: float
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    seg_keep: dict[int, torch.Tensor] = field(default_factory=dict)
    emptied: int = 0

    def summary(self, lengths: dict[int, int]) -> dict:
        total = sum(lengths.values())
        kept = sum(len(k) for k in self.keep.values())
        segs = sum(s.numel() for s in self.seg_keep.values())
        kept_segs = sum(int(s.sum()) for s in self.seg_keep.values())
        R = next((s.shape[1] for s in self.seg_keep.values() if s.ndim == 2), 1)
        return {"token_prune": self.token_prune, "segment_prune": self.segment_prune, "visual_tokens_before": total,
                "visual_tokens_kept": kept, "tokens_pruned_fraction": 1 - kept / total if total else 0.0,
                "tokens_emptied_by_segments": self.emptied,
                "segments_zeroed_fraction": 1 - kept_segs / segs if segs else 0.0,
                # share of the original visual prompt parameters that are gone or zero
                "visual_pruned_fraction": 1 - kept_segs / (total * R) if total else 0.0,
                "kept": {str(i): k.tolist() for i, k in self.keep.items()},
                "segments_kept": {str(i): s.int().tolist() for i, s in self.seg_keep.items()}}


def n_pruned(fraction: float, count: int) -> int:
    """How many of `count` items a fraction removes (half rounds up, so 0.5 of 5 prunes 3)."""
    return min(count, int(fraction * count + 0.5))


def prune(token_scores: dict[int, torch.Tensor], segment_scores: dict[int, torch.Tensor], token_prune: float,
          segment_prune: float, rule: str = "global", min_segments_kept: int = 1) -> Pruning:
    """Lowest scores go first; ties keep the earlier token (stable sort), so pruning is deterministic."""
    out = Pruning(token_prune, segment_prune)
    for i, s in token_scores.items():
        m = s.numel()
        order = torch.sort(s, descending=True, stable=True).indices  # most important first
        keep = torch.sort(order[:m - n_pruned(token_prune, m)]).values  # keep the original order
        seg = segment_scores[i][keep]  # (k, R)
        k, R = seg.shape
        mask = torch.ones(k, R, dtype=torch.bool)
        if rule == "global":
            drop = torch.sort(seg.flatten(), stable=True).indices[:n_pruned(segment_prune, k * R)]
            mask.view(-1)[drop] = False
        elif rule == "per-token":
            n = min(n_pruned(segment_prune, R), R - min_segments_kept)
            drop = torch.sort(seg, dim=1, stable=True).indices[:, :n]  # (k, n) lowest of each token
            mask.scatter_(1, drop, False)
        else:
            raise ValueError(f"segment rule {rule!r}: 'global' or 'per-token'")
        alive = mask.any(dim=1)  # a token with every segment pruned is pruned as a token
        out.emptied += int((~alive).sum())
        out.keep[i], out.seg_keep[i] = keep[alive], mask[alive]
    return out


def apply_pruning(source: PromptParams, pruning: Pruning,
                  values: dict[str, torch.Tensor] | None = None) -> PromptParams:
    """A new PromptParams without masks holding only the kept tokens, with pruned segments fixed at zero.

    values: None copies `source`'s current tensors (stage-1 prompts hard-pruned, for the search);
    a stage-1 initial state dict rewinds to the initial values (kept rows of them)."""
    state = {k: v.detach().clone() for k, v in (values or source.state_dict()).items()}
    new = PromptParams.__new__(PromptParams)
    torch.nn.Module.__init__(new)
    for attr in ("L", "D", "H", "d", "deep", "shared_kv", "segments", "segment_layout", "pooling",
                 "prompt_dropout"):
        setattr(new, attr, getattr(source, attr))
    new.visual, new.key, new.value = torch.nn.ParameterDict(), torch.nn.ParameterDict(), torch.nn.ParameterDict()
    for k in source.visual:
        keep = pruning.keep.get(int(k))
        v = state[f"visual.{k}"]
        if keep is not None:
            v = v[keep]
        if v.shape[0]:
            new.visual[k] = torch.nn.Parameter(v.contiguous())
    for name in ("key", "value"):
        for k in getattr(source, name):
            getattr(new, name)[k] = torch.nn.Parameter(state[f"{name}.{k}"])
    new.head_weight = torch.nn.Parameter(state["head_weight"])
    new.head_bias = torch.nn.Parameter(state["head_bias"])
    new.masks = {}
    new.seg_keep = {i: s.float() for i, s in pruning.seg_keep.items() if str(i) in new.visual}
    return new.eval()
