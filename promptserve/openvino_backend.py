"""The prompted forward compiled by OpenVINO for the CPU (`--backend openvino`, the [openvino] extra).

The graph is PromptedViT.forward_batch itself, traced with every prompt tensor as an input: each sample's
visual and key/value prompts, their lengths, its deep flag and its head are gathered from the bank in torch and
fed to the compiled model, so an upload or a hot swap changes inputs, never the graph. Shapes are bucketed so a
few compiled variants serve every batch: the batch padded to a power of two; the visual slots of every layer to
one power of two (the longest served so far, at least one) and the key/value slots to another, padded slots
masked as keys as the reference masks a ragged batch's; the classes to a power of two. With them goes which of
the reference's paths the rows take (all deep, all shallow, or mixed), since tracing records the branch it took.
Slots, classes and path only grow ("so far"): once the resident tasks have been served together (the server's
warm-up does that before it says ready), every later batch, of any mix, runs on one graph per batch size.

Tracing is the slow step (seconds), compiling a traced graph for another batch size a fraction of that: a graph
is traced once per (slots, classes, rows) with the batch left free, then compiled per batch size. At most
`max_variants` compiled variants (and as many traced graphs) are kept, the least recently used dropped beyond.

The precision is OpenVINO's inference-precision hint on the float32 graph: f32 for float32 (its CPU plugin would
otherwise run bf16 on a CPU with AMX or AVX512-BF16), bf16 for bfloat16.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from time import perf_counter
from typing import NamedTuple

import openvino as ov
import torch
from torch import nn

from promptserve.backends import Backend
from promptserve.bank import PromptBatch
from promptserve.model import PromptedViT

log = logging.getLogger(__name__)
MAX_VARIANTS = 8
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def bucket(n: int) -> int:
    """0 for 0, else the power of two >= n."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


# the inputs whose rows are not their first dimension: (layers, rows, ...)
LAYER_FIRST = {"visual_len", "kv_len", "visual", "key", "value"}


class Shape(NamedTuple):
    """One compiled variant: padded batch, visual slots and key/value slots (every layer), classes, and the
    rows' path: 'deep' (every row deep), 'shallow' (none) or 'mixed'."""

    batch: int
    visual: int
    kv: int
    classes: int
    rows: str

    @property
    def graph(self) -> tuple[int, int, int, str]:
        """What a traced graph is specific to: all but the batch size."""
        return self.visual, self.kv, self.classes, self.rows


class _Graph(nn.Module):
    """forward_batch over per-row inputs: row b of every prompt tensor is sample b's (task_index = arange(B)),
    and every layer is masked (mask_free False), since which rows are padded is an input, not a shape. Visual
    slots are always given (a batch without visual prompts gets one masked slot): without them the forward
    sizes an empty tensor by the batch, which the trace would fix to the traced batch size."""

    def __init__(self, model: PromptedViT, all_deep: bool):
        super().__init__()
        self.model, self.all_deep = model, all_deep

    def forward(self, images, visual, visual_len, kv_len, deep, head_weight, head_bias, num_classes,
                key=None, value=None):
        layers = visual_len.shape[0]
        absent = [None] * layers
        batch = PromptBatch(
            task_index=torch.arange(images.shape[0]),
            visual=list(visual.unbind(0)), visual_len=list(visual_len.unbind(0)),
            key=absent if key is None else list(key.unbind(0)),
            value=absent if value is None else list(value.unbind(0)), kv_len=list(kv_len.unbind(0)),
            deep=deep, head_weight=head_weight, head_bias=head_bias, num_classes=num_classes,
            pooling=self.model.pooling, all_deep=self.all_deep or None, mask_free=[False] * layers)
        return self.model.forward_batch(images, batch)


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, model: PromptedViT, dtype: torch.dtype, max_variants: int = MAX_VARIANTS):
        super().__init__(model, dtype)
        self.max_variants = max_variants
        self.traced = self.compiled = 0  # graphs traced and variants compiled so far (evicted ones included)
        self._core = ov.Core()
        # the torch thread count is the server's setting (torch_threads): OpenVINO's pool takes the same
        self._config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype],
                        "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self._graphs: OrderedDict[tuple, ov.Model] = OrderedDict()
        self._variants: OrderedDict[Shape, ov.InferRequest] = OrderedDict()
        self._widest: Shape | None = None  # the widest shape served so far (batch size aside): see _widened
        self._lock = threading.Lock()

    @property
    def variants(self) -> list[Shape]:
        """The compiled variants, least recently used first."""
        return list(self._variants)

    def classify(self, images: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
        n, classes = images.shape[0], batch.head_weight.shape[1]
        shape, inputs = self._inputs(images, batch)
        with self._lock:
            request = self._variant(shape, inputs)
            out = request.infer({name: t.numpy() for name, t in inputs.items()}, share_inputs=True)
            return torch.from_numpy(out[0][:n, :classes].copy())  # the request reuses its output buffer

    def _inputs(self, images: torch.Tensor, batch: PromptBatch) -> tuple[Shape, dict[str, torch.Tensor]]:
        """The batch as one row per sample, padded to its bucket (padded rows: no prompts, no classes)."""
        ti, n, bank = batch.task_index, images.shape[0], self.model.bank
        deep = batch.deep.index_select(0, ti)
        rows = "deep" if bool(deep.all()) else "mixed" if bool(deep.any()) else "shallow"
        widest_visual = max((v.shape[1] for v in batch.visual if v is not None), default=0)
        widest_kv = max((k.shape[2] for k in batch.key if k is not None), default=0)
        classes = batch.head_weight.shape[1]
        shape = self._widened(Shape(bucket(n), max(1, bucket(widest_visual)), bucket(widest_kv), bucket(classes),
                                    rows))
        B = shape.batch

        def padded(t: torch.Tensor | None, *size: int, fill=0) -> torch.Tensor:
            """The sample rows of per-task `t` in the top-left corner of a zero (B, *size) (None: all zero)."""
            out = (batch.head_weight if t is None else t).new_full((B, *size), fill)
            if t is not None:
                out[(slice(0, n), *(slice(0, s) for s in t.shape[1:]))] = t.index_select(0, ti)
            return out

        inputs = {
            "images": torch.cat([images, images.new_zeros(B - n, *images.shape[1:])]).contiguous(),
            "visual": torch.stack([padded(v, shape.visual, bank.D) for v in batch.visual]),  # (L, B, M, D)
            "visual_len": torch.stack([padded(t) for t in batch.visual_len]),  # (L, B)
            "kv_len": torch.stack([padded(t) for t in batch.kv_len]),
            "deep": padded(batch.deep, fill=rows == "deep"),  # padded rows keep the batch's path
            "head_weight": padded(batch.head_weight, shape.classes, bank.D),
            "head_bias": padded(batch.head_bias, shape.classes),
            "num_classes": padded(batch.num_classes),
        }
        if shape.kv:
            inputs["key"] = torch.stack([padded(k, bank.H, shape.kv, bank.d) for k in batch.key])  # (L, B, H, P, d)
            inputs["value"] = torch.stack([padded(v, bank.H, shape.kv, bank.d) for v in batch.value])
        return shape, inputs

    def _widened(self, shape: Shape) -> Shape:
        """`shape` padded to the widest slots, classes and path this backend has served: a batch of narrower
        tasks then runs on the graph already compiled for its batch size instead of tracing one of its own, so
        traffic over tasks of many prompt lengths needs one graph and a variant per batch size, not one per
        mix (which would outgrow `max_variants` and recompile on the request path). The widths only grow;
        padded slots are masked, so the logits are the same."""
        with self._lock:
            seen = self._widest or shape
            rows = shape.rows if seen.rows == shape.rows else "mixed"
            self._widest = Shape(0, max(seen.visual, shape.visual), max(seen.kv, shape.kv),
                                 max(seen.classes, shape.classes), rows)
            return self._widest._replace(batch=shape.batch)

    def _variant(self, shape: Shape, inputs: dict[str, torch.Tensor]) -> ov.InferRequest:
        request = self._variants.get(shape)
        if request is not None:
            self._variants.move_to_end(shape)
            return request
        start = perf_counter()
        graph = self._graph(shape, inputs).clone()
        graph.reshape({name: list(t.shape) for name, t in inputs.items()})  # static: this batch size's shapes
        request = self._core.compile_model(graph, "CPU", self._config).create_infer_request()
        self._variants[shape] = request
        if len(self._variants) > self.max_variants:
            self._variants.popitem(last=False)
        self.compiled += 1
        log.info("openvino compiled %s (%s) in %.1f s; %d of at most %d variants held", shape,
                 self._config["INFERENCE_PRECISION_HINT"], perf_counter() - start, len(self._variants),
                 self.max_variants)
        return request

    def _graph(self, shape: Shape, inputs: dict[str, torch.Tensor]) -> ov.Model:
        """The traced graph for `shape`'s slots, classes and rows, its batch size free."""
        graph = self._graphs.get(shape.graph)
        if graph is not None:
            self._graphs.move_to_end(shape.graph)
            return graph
        # traced outside any inference mode the caller runs in (the tracer cannot record inference tensors), on
        # two rows at least: forward_batch runs a one-row head as nn.Linear, a branch the trace would keep
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on the host-side branches it records as taken
            example = {name: t.clone() if shape.batch > 1 else torch.cat([t, t], dim=int(name in LAYER_FIRST))
                       for name, t in inputs.items()}
            graph = ov.convert_model(_Graph(self.model, shape.rows == "deep"), example_input=example)
        self._graphs[shape.graph] = graph
        if len(self._graphs) > self.max_variants:
            self._graphs.popitem(last=False)
        self.traced += 1
        return graph
