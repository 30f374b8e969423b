"""promptserve: serve many vision tasks from one frozen ViT with E2VPT prompt sets."""

from promptserve.backbone import Backbone, BackboneError, DataConfig
from promptserve.bank import PromptBank, PromptBatch
from promptserve.config import ConfigError, PromptConfig
from promptserve.model import PromptedViT
from promptserve.promptset import (
    FORMAT,
    DTypeError,
    FingerprintError,
    FormatError,
    LabelsError,
    MissingTensorError,
    NonFiniteError,
    PromptSet,
    PromptSetError,
    ShapeError,
)

__version__ = "0.1.0"

__all__ = [
    "FORMAT", "Backbone", "BackboneError", "ConfigError", "DTypeError", "DataConfig", "FingerprintError",
    "FormatError", "LabelsError", "MissingTensorError", "NonFiniteError", "PromptBank", "PromptBatch",
    "PromptConfig", "PromptSet", "PromptSetError", "PromptedViT", "ShapeError",
]
