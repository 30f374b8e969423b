"""PromptBank: every resident task's prompts packed into padded tensors, one row per task.

A forward gathers the rows of the tasks in its batch (a copy, taken under the bank's lock) into a
`PromptBatch`. Writers take the same lock, so a batch sees each task either wholly before or wholly
after a swap, and a batch in flight finishes on the version it gathered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from promptserve.promptset import PromptSet


@dataclass
class PromptBatch:
    """The prompts one forward needs, for U distinct tasks; the trainer builds one from its parameters.

    task_index (B,) picks each sample's row. Per layer i (None where no task of the batch has prompts):
      visual[i] (U, M_i, D) with visual_len[i] (U,) valid tokens; key[i], value[i] (U, H, P_i, d) with
      kv_len[i] (U,). deep (U,) False for shallow tasks, whose layer-0 prompts are carried through.
    Head: head_weight (U, C, D), head_bias (U, C), num_classes (U,); pooling 'token' or 'avg'.
    """

    task_index: torch.Tensor
    visual: list[torch.Tensor | None]
    visual_len: list[torch.Tensor]
    key: list[torch.Tensor | None]
    value: list[torch.Tensor | None]
    kv_len: list[torch.Tensor]
    deep: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    num_classes: torch.Tensor
    pooling: str = "token"
    versions: tuple[str, ...] = ()  # per sample: the version of its task that this batch uses
    labels: tuple[tuple[str, ...], ...] = ()  # per sample: that version's class names (a swap may follow)
    # Facts the forward would otherwise read back from the device (a host sync per layer on a GPU), known on
    # the host when the batch is built; None: not known, the forward computes them from the tensors.
    all_deep: bool | None = None  # every task of the batch is deep
    mask_free: list[bool] | None = None  # per layer: no sample has padded visual or key/value prompt slots

    @classmethod
    def for_one_task(cls, batch_size: int, num_layers: int, visual: dict[int, torch.Tensor],
                     key: dict[int, torch.Tensor], value: dict[int, torch.Tensor] | None,
                     head_weight: torch.Tensor, head_bias: torch.Tensor, deep: bool = True,
                     pooling: str = "token") -> PromptBatch:
        """A batch of one task from raw (possibly trainable) tensors: visual {layer: (M, D)},
        key/value {layer: (H, P, d)} (value None: shared K/V), head (C, D), (C,). Gradients flow."""
        value = key if value is None else value
        device = head_weight.device

        def lengths(t, dim):
            return torch.tensor([0 if t is None else t.shape[dim]], device=device)

        vis = [visual.get(i) for i in range(num_layers)]
        keys = [key.get(i) for i in range(num_layers)]
        return cls(
            task_index=torch.zeros(batch_size, dtype=torch.long, device=device),
            visual=[None if t is None or t.shape[0] == 0 else t[None] for t in vis],
            visual_len=[lengths(t, 0) for t in vis],
            key=[None if t is None or t.shape[1] == 0 else t[None] for t in keys],
            value=[None if key.get(i) is None or key[i].shape[1] == 0 else value[i][None] for i in range(num_layers)],
            kv_len=[lengths(t, 1) for t in keys],
            deep=torch.tensor([deep], device=device), head_weight=head_weight[None], head_bias=head_bias[None],
            num_classes=torch.tensor([head_weight.shape[0]], device=device), pooling=pooling,
            all_deep=deep, mask_free=[True] * num_layers)  # one task: nothing is padded


@dataclass(frozen=True)
class _Row:
    """Where a task's prompts sit and what they are: a gather reads these with the tensors, under one lock."""

    index: int
    version: str
    labels: tuple[str, ...]


def _grow(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad `t` along `dim` up to `size` (no-op when already that big)."""
    if t.shape[dim] >= size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class PromptBank:
    def __init__(self, num_layers: int, embed_dim: int, num_heads: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, pooling: str = "token"):
        self.L, self.D, self.H, self.d = num_layers, embed_dim, num_heads, head_dim
        self.device, self.dtype, self.pooling = torch.device(device), dtype, pooling
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._free: list[int] = []
        self._cap = 0
        z: dict[str, Any] = dict(device=self.device, dtype=dtype)
        self.visual = [torch.zeros(0, 0, embed_dim, **z) for _ in range(num_layers)]  # (cap, M_i, D)
        self.key = [torch.zeros(0, num_heads, 0, head_dim, **z) for _ in range(num_layers)]  # (cap, H, P_i, d)
        self.value = [torch.zeros(0, num_heads, 0, head_dim, **z) for _ in range(num_layers)]
        self.head_weight = torch.zeros(0, 0, embed_dim, **z)  # (cap, C, D)
        self.head_bias = torch.zeros(0, 0, **z)  # (cap, C)
        # lengths are kept on the host too, so a gather sizes its batch without a device sync
        self.visual_len = torch.zeros(num_layers, 0, dtype=torch.long)  # (L, cap)
        self.kv_len = torch.zeros(num_layers, 0, dtype=torch.long)
        self.num_classes = torch.zeros(0, dtype=torch.long)
        self.deep = torch.zeros(0, dtype=torch.bool)

    # ---- bookkeeping -----------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def tasks(self) -> list[str]:
        return sorted(self._rows)

    def version(self, name: str) -> str:
        return self._rows[name].version

    def labels(self, name: str) -> tuple[str, ...]:
        return self._rows[name].labels

    def nbytes(self) -> int:
        tensors = [*self.visual, *self.key, *self.value, self.head_weight, self.head_bias]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- writes ----------------------------------------------------------------------------------
    def put(self, name: str, ps: PromptSet, version: str | None = None) -> None:
        """Add or replace a task (the caller validated `ps`). Atomic with respect to `gather`."""
        version = version or ps.version
        cast: dict[str, Any] = dict(device=self.device, dtype=self.dtype)
        with self._lock:
            held = self._rows.get(name)
            row = held.index if held is not None else self._free.pop() if self._free else self._add_row()
            self._fit(ps)
            for i in range(self.L):
                v = ps.visual(i)
                m = 0 if v is None else v.shape[0]
                self.visual[i][row].zero_()
                if v is not None and m:
                    self.visual[i][row, :m] = v.to(**cast)
                self.visual_len[i, row] = m
                kv = ps.kv(i)
                p = 0 if kv is None else kv[0].shape[1]
                self.key[i][row].zero_()
                self.value[i][row].zero_()
                if kv is not None and p:
                    self.key[i][row, :, :p] = kv[0].to(**cast)
                    self.value[i][row, :, :p] = kv[1].to(**cast)
                self.kv_len[i, row] = p
            c = ps.num_classes
            self.head_weight[row].zero_()
            self.head_bias[row].zero_()
            self.head_weight[row, :c] = ps.tensors["head.weight"].to(**cast)
            self.head_bias[row, :c] = ps.tensors["head.bias"].to(**cast)
            self.num_classes[row] = c
            self.deep[row] = ps.deep
            self._rows[name] = _Row(row, version, tuple(ps.labels))

    def remove(self, name: str) -> None:
        with self._lock:
            self._free.append(self._rows.pop(name).index)

    def _add_row(self) -> int:
        """Double the capacity (amortised growth); returns the first new row."""
        old, new = self._cap, max(4, 2 * self._cap)
        self.visual = [_grow(t, 0, new) for t in self.visual]
        self.key = [_grow(t, 0, new) for t in self.key]
        self.value = [_grow(t, 0, new) for t in self.value]
        self.head_weight, self.head_bias = _grow(self.head_weight, 0, new), _grow(self.head_bias, 0, new)
        self.visual_len, self.kv_len = _grow(self.visual_len, 1, new), _grow(self.kv_len, 1, new)
        self.num_classes, self.deep = _grow(self.num_classes, 0, new), _grow(self.deep, 0, new)
        self._free.extend(range(new - 1, old, -1))
        self._cap = new
        return old

    def _fit(self, ps: PromptSet) -> None:
        """Widen the padded dims so `ps` fits (its prompt lengths and class count)."""
        for i in range(self.L):
            v, kv = ps.visual(i), ps.kv(i)
            if v is not None:
                self.visual[i] = _grow(self.visual[i], 1, v.shape[0])
            if kv is not None:
                self.key[i] = _grow(self.key[i], 2, kv[0].shape[1])
                self.value[i] = _grow(self.value[i], 2, kv[1].shape[1])
        self.head_weight = _grow(self.head_weight, 1, ps.num_classes)
        self.head_bias = _grow(self.head_bias, 1, ps.num_classes)

    # ---- reads -----------------------------------------------------------------------------------
    def gather(self, tasks: list[str]) -> PromptBatch:
        """Copy the rows of `tasks` (one name per sample, any mix) into a PromptBatch, trimmed to the
        longest prompts among them. Raises KeyError naming a task that is not resident."""
        with self._lock:
            missing = [t for t in dict.fromkeys(tasks) if t not in self._rows]
            if missing:
                raise KeyError(f"tasks not resident: {missing}")
            unique = list(dict.fromkeys(tasks))
            rows_list = [self._rows[t].index for t in unique]
            rows = torch.tensor(rows_list, dtype=torch.long)
            rows_dev = rows.to(self.device)
            slot = {t: j for j, t in enumerate(unique)}
            task_index = torch.tensor([slot[t] for t in tasks], dtype=torch.long, device=self.device)
            visual, visual_len, key, value, kv_len, mask_free = [], [], [], [], [], []
            all_deep = bool(self.deep[rows].all())  # host tensors: no device sync
            for i in range(self.L):
                vl, kl = self.visual_len[i, rows], self.kv_len[i, rows]
                m, p = int(vl.max()), int(kl.max())
                mask_free.append(int(vl.min()) == m and int(kl.min()) == p)
                visual.append(self.visual[i].index_select(0, rows_dev)[:, :m] if m else None)
                key.append(self.key[i].index_select(0, rows_dev)[:, :, :p] if p else None)
                value.append(self.value[i].index_select(0, rows_dev)[:, :, :p] if p else None)
                visual_len.append(vl.to(self.device))
                kv_len.append(kl.to(self.device))
            c = int(self.num_classes[rows].max())
            return PromptBatch(
                task_index=task_index, visual=visual, visual_len=visual_len, key=key, value=value, kv_len=kv_len,
                deep=self.deep[rows].to(self.device),
                head_weight=self.head_weight.index_select(0, rows_dev)[:, :c],
                head_bias=self.head_bias.index_select(0, rows_dev)[:, :c],
                num_classes=self.num_classes[rows].to(self.device), pooling=self.pooling,
                versions=tuple(self._rows[t].version for t in tasks),
                labels=tuple(self._rows[t].labels for t in tasks),
                # shallow tasks carry layer 0's prompts with their own lengths: only an all-deep batch is known
                all_deep=all_deep, mask_free=mask_free if all_deep else None)
