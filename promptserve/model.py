"""PromptedViT: the E2VPT forward over a frozen timm ViT, for batches that mix any tasks.

Sequence before layer i: [prefix (CLS), visual prompt slots (M_i, padded to the batch's longest), patches].
Visual prompts get no position embedding. Inside each attention, the task's key/value prompts go after the
K/V projections and head split, before the real keys; padded visual slots and padded key/value slots are
masked as keys, so each sample gets exactly what a batch of its task alone would give.

The timm model is not modified: this module drives timm's own Block parts (norm1, attn.qkv, ..., mlp) in
the same order as `Block.forward`, passing the batch's prompts explicitly. No hidden per-call state, so
several threads may run forwards while another swaps tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import prompt_attention
from promptserve.backbone import Backbone
from promptserve.bank import PromptBank, PromptBatch
from promptserve.promptset import PromptSet


class Classified(NamedTuple):
    logits: torch.Tensor  # (B, C_max), -inf beyond each sample's own class count
    versions: tuple[str, ...]  # per sample
    labels: tuple[tuple[str, ...], ...]  # per sample: its version's class names


def _pad_tokens(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, M, D) -> (B, m, D), zero-padded."""
    return x if x.shape[1] == m else F.pad(x, (0, 0, 0, m - x.shape[1]))


class PromptedViT(nn.Module):
    def __init__(self, backbone: Backbone, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, attention_impl: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.vit = backbone.model
        if device is not None or dtype is not None:
            self.vit.to(device=device, dtype=dtype)
        p = next(self.vit.parameters())
        self.attention_impl = attention_impl  # None: kernels' dispatcher decides (env PROMPTSERVE_ATTENTION)
        self.pooling = backbone.pooling
        self.bank = PromptBank(backbone.num_layers, backbone.embed_dim, backbone.num_heads, backbone.head_dim,
                               device=p.device, dtype=p.dtype, pooling=self.pooling)

    # ---- tasks -----------------------------------------------------------------------------------
    def add_task(self, name: str, prompt_set: PromptSet) -> None:
        """Validate against this backbone, then add or atomically replace the task."""
        prompt_set.validate(self.backbone)
        self.bank.put(name, prompt_set)

    def remove_task(self, name: str) -> None:
        self.bank.remove(name)

    @property
    def tasks(self) -> list[str]:
        return self.bank.tasks

    # ---- forward ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, images: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        """images (B, 3, S, S), tasks: one resident task name per image -> logits (B, C_max),
        -inf beyond each sample's own class count."""
        return self.classify(images, tasks)[0]

    @torch.inference_mode()
    def classify(self, images: torch.Tensor, tasks: list[str]) -> Classified:
        """Like forward, plus the version of each sample's task that produced its logits and that version's
        class names (taken in the same gather, so a swap right after cannot mislabel them)."""
        if len(tasks) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(tasks)} task names")
        batch = self.bank.gather(tasks)
        return Classified(self.forward_batch(images, batch), batch.versions, batch.labels)

    def forward_batch(self, images: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        """The prompted forward for an explicit PromptBatch (differentiable: the trainer's path)."""
        vit = self.vit
        ti = batch.task_index  # (B,)
        p = vit.patch_embed.proj.weight
        x = vit.patch_embed(images.to(device=p.device, dtype=p.dtype))  # (B, Np, D)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))  # (B, prefix + Np, D)
        prefix = vit.num_prefix_tokens
        m_prev = 0  # prompt slots currently in the sequence
        lens = torch.zeros_like(ti)  # (B,) valid prompt tokens per sample
        for i, blk in enumerate(vit.blocks):
            prompts, lens = self._layer_prompts(x, batch, i, prefix, m_prev, lens)  # (B, m, D), (B,)
            m = prompts.shape[1]
            x = torch.cat([x[:, :prefix], prompts, x[:, prefix + m_prev:]], dim=1)  # (B, prefix + m + Np, D)
            m_prev = m
            x = x + blk.drop_path1(blk.ls1(self._attention(blk.attn, blk.norm1(x), batch, i, prefix + lens,
                                                            prefix + m)))
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        x = vit.norm(x)
        x = torch.cat([x[:, :prefix], x[:, prefix + m_prev:]], dim=1)  # prompts never reach the pool
        feats = vit.head_drop(vit.fc_norm(vit.pool(x, pool_type=batch.pooling)))  # (B, D)
        return self._head(feats, batch)

    def _layer_prompts(self, x, batch: PromptBatch, i: int, prefix: int, m_prev: int, lens):
        """The visual prompt slots before layer i and each sample's valid count.
        Deep tasks take visual.{i} (none if the set has none there); shallow tasks keep what layer i-1 output."""
        ti = batch.task_index
        visual = batch.visual[i]
        new = visual.index_select(0, ti) if visual is not None else x.new_zeros(len(ti), 0, x.shape[-1])
        new_lens = batch.visual_len[i].index_select(0, ti)
        if i == 0:
            return new, new_lens
        if batch.all_deep:  # known on the host: no device sync
            return new, new_lens
        deep = batch.deep.index_select(0, ti)  # (B,)
        if bool(deep.all()):
            return new, new_lens
        carried = x[:, prefix:prefix + m_prev]  # (B, m_prev, D)
        if not bool(deep.any()):
            return carried, lens
        m = max(new.shape[1], m_prev)
        prompts = torch.where(deep[:, None, None], _pad_tokens(new, m), _pad_tokens(carried, m))
        return prompts, torch.where(deep, new_lens, lens)

    def _attention(self, attn, x, batch: PromptBatch, i: int, pad_start, pad_end: int):
        """timm's Attention.forward with the task's key/value prompts in front of the real keys."""
        B, N, _ = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d), strided views
        q, k = attn.q_norm(q), attn.k_norm(k)
        pad_end_t = torch.full_like(pad_start, pad_end)
        mask_free = None if batch.mask_free is None else batch.mask_free[i]
        out = prompt_attention(q, k, v, batch.key[i], batch.value[i], batch.task_index, batch.kv_len[i],
                               pad_start, pad_end_t, scale=attn.scale, impl=self.attention_impl,
                               needs_mask=None if mask_free is None else not mask_free)  # (B, N, H*d)
        return attn.proj_drop(attn.proj(attn.norm(out)))

    @staticmethod
    def _head(feats: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        ti = batch.task_index
        if batch.head_weight.shape[0] == 1:  # one task: exactly the nn.Linear a plain model would run
            logits = F.linear(feats, batch.head_weight[0], batch.head_bias[0])
        else:
            w = batch.head_weight.index_select(0, ti)  # (B, C, D)
            logits = torch.bmm(w, feats.unsqueeze(-1)).squeeze(-1) + batch.head_bias.index_select(0, ti)
        beyond = torch.arange(logits.shape[1], device=logits.device) >= batch.num_classes.index_select(0, ti)[:, None]
        return logits.masked_fill(beyond, float("-inf"))  # (B, C_max)
