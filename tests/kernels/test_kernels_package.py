"""The kernels package's public names stay what they are whatever is imported first (issue 12).

`kernels.prompt_attention` is the dispatcher function. A submodule of the same name would replace it as a
package attribute the moment anything imported the submodule (as running `pytest tests/kernels` alone in a fresh
process did), and every `PromptedViT` forward would then fail with "'module' object is not callable".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Imports every kernels submodule first (the order that broke), then runs a prompted forward.
_FRESH_PROCESS = """
import importlib, pkgutil, os
os.environ.setdefault("TRITON_INTERPRET", "1")
import kernels
for info in pkgutil.iter_modules(kernels.__path__):
    try:
        importlib.import_module(f"kernels.{info.name}")
    except ImportError:  # triton missing: the submodule that needs it cannot clash either
        pass
clashes = [name for name in kernels.__all__ if not callable(getattr(kernels, name))]
assert not clashes, f"kernels attributes replaced by submodules: {clashes}"
import torch, promptserve as ps
from promptserve.testing import random_images, random_prompt_set, tiny_backbone
bb = tiny_backbone()
model = ps.PromptedViT(bb)
model.add_task("a", random_prompt_set(bb))
print(tuple(model(random_images(2), ["a", "a"]).shape))
"""


def test_public_names_survive_importing_every_submodule_first():
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 5)"
