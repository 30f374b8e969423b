"""Scratch experiment (not shipped): a prompt method that also tunes the backbone's stem (patch and position
embeddings, class token), to size the follow-up a per-task stem would be. The stem is made trainable in place and
reset to the backbone's values at every prompt build (stage 1 and the rewind of e2vpt start from it); run one
seed per process (--seeds 1 --no-final-on-all --no-hp-search) so no seed or trial inherits another's stem."""

import torch

import training.stages as st

STEM = ("patch_embed.", "pos_embed", "cls_token")
_build = st.build_prompt_params
_saved: dict[str, torch.Tensor] = {}


def build(backbone, C, cfg, **kw):
    params = _build(backbone, C, cfg, **kw)
    stem = [(n, p) for n, p in backbone.model.named_parameters() if n.startswith(STEM)]
    with torch.no_grad():
        for n, p in stem:
            _saved.setdefault(n, p.detach().clone())
            p.copy_(_saved[n])
            p.requires_grad_(True)
    params.stem = torch.nn.ParameterList([p for _, p in stem])  # so fit() hands them to the optimizer
    print(f"[stem] {sum(p.numel() for _, p in stem):,} stem weights train with the prompts", flush=True)
    return params


st.build_prompt_params = build
from _launch import run_train  # noqa: E402

run_train()
