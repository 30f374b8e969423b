"""E2VPT pruning: importance scores from mask gradients, token- then segment-wise pruning, rewinding.

Stage 1 trains visual + key-value prompts + head with token masks rho_i (M_i,) and segment masks
(M_i, R) multiplied into the visual prompts (all ones, so the forward is unchanged). After each backward
the mask gradients are accumulated: S = E_batches |dL/drho| (default) or the signed variant
S = -E_batches[dL/drho], the first-order estimate of the loss increase when the token is removed.
(The expectation is over training batches of the mean loss, as in the official code and in
"Are Sixteen Heads Really Better than One?", rather than over single examples, which would need
per-example gradients.)

Token-wise pruning removes round(token_prune * M_i) lowest-scoring tokens of every layer; segment-wise
pruning then zeroes round(segment_prune * k_i * R) lowest-scoring segments among the k_i kept tokens of
layer i. Rewinding resets the kept prompts, the key-value prompts and the head to their stage-1 initial
values and retrains them with the same schedule; pruned tokens are REMOVED from the sequence (not kept
as zero vectors as in the official code), so what is trained is exactly what is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from training.methods import PromptParams


class Importance:
    """Accumulates mask gradients of a with_masks PromptParams after every backward."""

    def __init__(self, params: PromptParams, signed: bool = False):
        self.params, self.signed, self.batches = params, signed, 0
        self.token = {i: torch.zeros_like(rho) for i, (rho, _) in params.masks.items()}  # {i: (M_i,)}
        self.segment = {i: torch.zeros_like(seg) for i, (_, seg) in params.masks.items()}  # {i: (M_i, R)}

    def __call__(self) -> None:
        for i, (rho, seg) in self.params.masks.items():
            for acc, mask in ((self.token[i], rho), (self.segment[i], seg)):
                g = mask.grad if mask.grad is not None else torch.zeros_like(mask)
                acc += -g if self.signed else g.abs()
                mask.grad = None
        self.batches += 1

    def scores(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        n = max(1, self.batches)
        return ({i: t / n for i, t in self.token.items()}, {i: t / n for i, t in self.segment.items()})


@dataclass
class Pruning:
    """keep {layer: sorted kept token indices (k_i,)}; seg_keep {layer: (k_i, R) bool, True = kept}."""

    token_prune: float
    segment_prune: float
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    seg_keep: dict[int, torch.Tensor] = field(default_factory=dict)

    def summary(self, lengths: dict[int, int]) -> dict:
        total = sum(lengths.values())
        kept = sum(len(k) for k in self.keep.values())
        segs = sum(s.numel() for s in self.seg_keep.values())
        zeroed = sum(int((~s).sum()) for s in self.seg_keep.values())
        return {"token_prune": self.token_prune, "segment_prune": self.segment_prune, "visual_tokens_before": total,
                "visual_tokens_kept": kept, "tokens_pruned_fraction": 1 - kept / total if total else 0.0,
                "segments_zeroed_fraction": zeroed / segs if segs else 0.0,
                # share of the original visual prompt parameters that are gone or zero
                "visual_pruned_fraction": 1 - (kept - zeroed / max(1, segs) * kept) / total if total else 0.0,
                "kept": {str(i): k.tolist() for i, k in self.keep.items()}}


def n_pruned(fraction: float, count: int) -> int:
    """How many of `count` items a fraction removes (half rounds up, so 0.5 of 5 prunes 3)."""
    return min(count, int(fraction * count + 0.5))


def prune(token_scores: dict[int, torch.Tensor], segment_scores: dict[int, torch.Tensor], token_prune: float,
          segment_prune: float) -> Pruning:
    """Lowest scores go first; ties keep the earlier token (stable sort), so pruning is deterministic."""
    out = Pruning(token_prune, segment_prune)
    for i, s in token_scores.items():
        m = s.numel()
        order = torch.sort(s, descending=True, stable=True).indices  # most important first
        keep = torch.sort(order[:m - n_pruned(token_prune, m)]).values  # keep the original order
        out.keep[i] = keep
        seg = segment_scores[i][keep]  # (k, R)
        flat = seg.flatten()
        drop = torch.sort(flat, stable=True).indices[:n_pruned(segment_prune, flat.numel())]
        mask = torch.ones(flat.numel(), dtype=torch.bool)
        mask[drop] = False
        out.seg_keep[i] = mask.view_as(seg)
    return out


def apply_pruning(source: PromptParams, pruning: Pruning,
                  values: dict[str, torch.Tensor] | None = None) -> PromptParams:
    """A new PromptParams without masks holding only the kept tokens, with pruned segments fixed at zero.

    values: None copies `source`'s current tensors (stage-1 prompts hard-pruned, for the search);
    a stage-1 initial state dict rewinds to the initial values (kept rows of them)."""
    state = {k: v.detach().clone() for k, v in (values or source.state_dict()).items()}
    new = PromptParams.__new__(PromptParams)
    torch.nn.Module.__init__(new)
    for attr in ("L", "D", "H", "d", "deep", "shared_kv", "segments", "segment_layout", "pooling"):
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
    return new
