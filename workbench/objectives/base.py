"""What the trainer asks of a training objective (SFT, GRQO): ``(model, batch) -> (loss, metrics)``.

The trainer never branches on which objective it runs. It samples the batch's prompts, calls the
objective, back-propagates ``loss`` and logs ``metrics``; objectives that keep state across steps
(GRQO's reference model) expose it through ``state_dict`` so a resumed run is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from workbench.types import Batch


@dataclass(frozen=True)
class StepInfo:
    """Where training is: ``step`` counts optimizer steps from 0, ``epoch`` from 0."""

    step: int
    epoch: int
    total_steps: int
    micro_batch: int = 0  # index of the micro-batch within the step (gradient accumulation)
    # Loss normaliser: the step's non-crowd boxes over all micro-batches and processes, divided
    # by their number, so accumulation and torchrun give the same loss. None: the batch's own.
    num_boxes: float | None = None


@dataclass
class ObjectiveOutput:
    """``loss``: the scalar to back-propagate; ``metrics``: floats to log (named, unweighted terms
    and diagnostics); ``extras``: tensors for analysis (per-query rewards, ...), never logged."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Batch, info: StepInfo) -> ObjectiveOutput:
        """Loss and metrics of one (micro-)batch whose ``prompts`` are already sampled."""
        ...


def objective_hooks(objective: Objective) -> dict[str, Any]:
    """The optional hooks an objective may define; the trainer calls those present.

    ``on_epoch_start(model, epoch)``, ``state_dict() -> dict[str, Tensor | number]``,
    ``load_state_dict(state)``.
    """
    names = ("on_epoch_start", "state_dict", "load_state_dict")
    return {n: getattr(objective, n) for n in names if callable(getattr(objective, n, None))}


def detach_metrics(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Tensors -> Python floats for logging."""
    return {
        k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()
    }
