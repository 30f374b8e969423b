"""promptserve: serve many vision tasks from one frozen ViT with E2VPT prompt sets.

Names are imported on first use (PEP 562), so `import promptserve.fileformat` (the registry, the CLI) does
not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbone", "BackboneError": "backbone", "BackboneSpec": "backbone", "DataConfig": "backbone",
    "RandomWeightsWarning": "backbone", "load_backbone": "backbone", "load_recorded_backbone": "backbone",
    "PromptBank": "bank", "PromptBatch": "bank",
    "AsyncClient": "client", "Client": "client", "ClientError": "client",
    "ConfigError": "config", "PromptConfig": "config",
    "PromptedViT": "model",
    "PromptSet": "promptset",
    "FORMAT": "fileformat", "DTypeError": "fileformat", "FingerprintError": "fileformat", "FormatError": "fileformat",
    "LabelsError": "fileformat", "MissingTensorError": "fileformat", "NonFiniteError": "fileformat",
    "PromptSetError": "fileformat", "ShapeError": "fileformat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"promptserve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'promptserve' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
    from promptserve.backbone import (  # noqa: F401
        Backbone,
        BackboneError,
        BackboneSpec,
        DataConfig,
        RandomWeightsWarning,
        load_backbone,
        load_recorded_backbone,
    )
    from promptserve.bank import PromptBank, PromptBatch  # noqa: F401
    from promptserve.client import AsyncClient, Client, ClientError  # noqa: F401
    from promptserve.config import ConfigError, PromptConfig  # noqa: F401
    from promptserve.fileformat import (  # noqa: F401
        FORMAT,
        DTypeError,
        FingerprintError,
        FormatError,
        LabelsError,
        MissingTensorError,
        NonFiniteError,
        PromptSetError,
        ShapeError,
    )
    from promptserve.model import PromptedViT  # noqa: F401
    from promptserve.promptset import PromptSet  # noqa: F401
