"""Scratch diagnostic (not shipped): `full` fine-tuning with only some of the copy's weights trainable.
PARTIAL=stem: patch embedding, position embedding, class token + head; PARTIAL=nostem: everything but those."""
import os

import training.stages as st

STEM = ("patch_embed.", "pos_embed", "cls_token")
_full = st.full_model


def full_model(backbone, num_classes, seed):
    model = _full(backbone, num_classes, seed)
    which = os.environ["PARTIAL"]
    for name, p in model.named_parameters():
        stem = name.startswith(STEM)
        head = name.startswith("head.")
        if which.startswith("last"):  # lastK: the last K blocks + final norm + head
            k = int(which[4:])
            depth = len(model.blocks)
            late = name.startswith("norm.") or any(name.startswith(f"blocks.{i}.") for i in range(depth - k, depth))
            p.requires_grad_(head or late)
        elif which.startswith("first"):  # firstK: the first K blocks + head
            k = int(which[5:])
            p.requires_grad_(head or any(name.startswith(f"blocks.{i}.") for i in range(k)))
        elif which in ("mlp", "attn"):  # every block's MLP (or attention) + head
            p.requires_grad_(head or (name.startswith("blocks.") and f".{which}." in name))
        else:
            p.requires_grad_(head or (stem if which == "stem" else not stem))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[partial] {which}: {n:,} trainable of {sum(p.numel() for p in model.parameters()):,}", flush=True)
    return model


st.full_model = full_model
from _launch import run_train  # noqa: E402

run_train()
