"""DINO-R1 workbench: visual-prompt detection trained with SFT or GRQO."""

from workbench.config import Config, load_config
from workbench.types import Batch, Detections, Exemplar, PromptSet, Target, VisualPrompt

__all__ = [
    "Batch",
    "Config",
    "Detections",
    "Exemplar",
    "PromptSet",
    "Target",
    "VisualPrompt",
    "load_config",
]
