"""Scratch experiment (not shipped): SPT-style visual prompt init (Wang et al., ICML 2024): each layer's visual
prompts start at k-means centres of that layer's input patch tokens over the task's training images.
Patches the trainer's prompt builder in-process, then runs `promptserve train` with the given args."""

import numpy as np
import torch

import training.stages as st
from promptserve.preprocess import normalise

PROTO: dict[int, torch.Tensor] = {}
_build, _stage1, _run = st.build_prompt_params, st.stage1, st.run_method


@torch.no_grad()
def layer_tokens(backbone, images: np.ndarray, per_image: int, seed: int) -> dict[int, torch.Tensor]:
    model, n_pre = backbone.model, backbone.model.num_prefix_tokens
    got: dict[int, list] = {i: [] for i in range(len(model.blocks))}
    gen = torch.Generator().manual_seed(seed)
    hooks = [blk.register_forward_pre_hook(lambda m, a, i=i: got[i].append(a[0][:, n_pre:].float()))
             for i, blk in enumerate(model.blocks)]
    try:
        for s in range(0, len(images), 256):
            model(normalise(images[s:s + 256], backbone.data_config))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i, chunks in got.items():
        t = torch.cat(chunks)  # (N, T, D)
        idx = torch.randint(0, t.shape[1], (t.shape[0], per_image), generator=gen)
        out[i] = t.gather(1, idx[..., None].expand(-1, -1, t.shape[2])).reshape(-1, t.shape[2])
    return out


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 30) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        for j in range(k):
            m = a == j
            if m.any():
                c[j] = x[m].mean(0)
    return c


def prototypes(cfg, backbone, data):
    m = cfg.visual_tokens
    toks = layer_tokens(backbone, data.images, 8, cfg.seed)
    PROTO.clear()
    PROTO.update({i: kmeans(t, m, cfg.seed) for i, t in toks.items()})
    print(f"[spt] prototypes: {m} per layer from {len(data.images)} images", flush=True)


def build(backbone, C, cfg, **kw):
    p = _build(backbone, C, cfg, **kw)
    with torch.no_grad():
        for k, v in p.visual.items():
            v.copy_(PROTO[int(k)][:v.shape[0]])
    return p


def stage1(cfg, backbone, data, *a, **k):
    prototypes(cfg, backbone, data)
    return _stage1(cfg, backbone, data, *a, **k)


def run_method(cfg, backbone, data, *a, **k):
    if cfg.method != "linear":
        prototypes(cfg, backbone, data)
    return _run(cfg, backbone, data, *a, **k)


st.build_prompt_params, st.stage1, st.run_method = build, stage1, run_method
import training.trainer as tr  # noqa: E402

for name in ("stage1", "run_method"):
    if hasattr(tr, name):
        setattr(tr, name, globals()[name])
from _launch import run_train  # noqa: E402

run_train()
