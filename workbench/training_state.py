"""What a trainer holds besides the weights, collected and put back so a run continues exactly.

:func:`training_state` gathers the optimizer, LR scheduler, AMP grad scaler and every global RNG
(torch CPU and CUDA, numpy, Python) with the trainer's own fields (data position, counters);
:func:`restore_training_state` puts them back, refusing a state that does not fit this run;
:func:`truncate_jsonl` drops the metrics logged after the step a run resumes from. The checkpoint
stores the returned structure (:func:`workbench.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.checkpoint import CheckpointError


def capture_rng_state() -> dict[str, Any]:
    """torch CPU (+ every CUDA device), numpy's and Python's global generator states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(
                "the CUDA device count changed since the checkpoint; CUDA RNG not restored",
                stacklevel=2,
            )
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def training_state(optimizer, scheduler, scaler=None, **fields: Any) -> dict[str, Any]:
    """What a trainer needs to continue exactly: optimizer, LR scheduler, AMP grad scaler and
    RNG states, plus the caller's ``fields`` (data position, counters)."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        **fields,
    }


def restore_training_state(
    state: dict[str, Any],
    source: Path,
    optimizer,
    scheduler,
    scaler=None,
    *,
    expect: dict[str, Any] | None = None,
) -> None:
    """Inverse of :func:`training_state` (the caller reads its own fields). ``expect``: entries
    that ``state["position"]`` must hold, e.g. the batch layout, checked first."""
    for key, value in (expect or {}).items():
        saved = state.get("position", {}).get(key)
        if saved != value:
            raise CheckpointError(
                f"{source} was saved with {key}={saved}, this run has {value}: resume with the "
                "same global batch (batch_size x processes), micro-batch size and dataset, or "
                "start a new run_dir"
            )
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as err:
        raise CheckpointError(
            f"the optimizer state in {source} does not fit this optimizer ({err}); the model or "
            "its parameter groups changed since it was saved: start a new run_dir, or load only "
            "the weights (load_checkpoint(path, model))"
        ) from err
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])


def truncate_jsonl(path: str | Path, below_step: int) -> None:
    """Keep the lines of a metrics log with ``step < below_step``: a run resumed from the
    checkpoint after ``below_step`` steps logs the later ones again, so none appears twice."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] < below_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash
            continue
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)
