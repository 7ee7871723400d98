"""A trainer's state as JSON plus named tensors, and the RNG and optimizer state it holds.

:mod:`workbench.checkpoint` stores what :func:`encode_state` returns: the structure as JSON and
the tensors in one safetensors file, each keyed by its path in the state
(``"trainer/optimizer/state/17/exp_avg"``: parameter 17's first moment). 0-d tensors (Adam's step
counts) stay in the JSON as numbers with their dtype, so a resumed optimizer gets the same dtypes
back. Tuples, int-keyed dicts and numpy arrays are tagged, because JSON alone would return them
as lists and string-keyed dicts, and an optimizer's state is keyed by int parameter ids.

:func:`training_state` and :func:`restore_training_state` collect and put back everything a
trainer needs to continue a run exactly: optimizer, LR scheduler, AMP grad scaler and every
global RNG; :func:`truncate_jsonl` drops the metrics logged after the step a run resumes from.
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
from torch import Tensor


# Defined here rather than in workbench.checkpoint because restore_training_state raises it and
# checkpoint.py builds on this module; checkpoint.py re-exports it.
class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, unsafe or does not fit; the message says what to do."""


def encode_state(obj: Any, tensors: dict[str, Tensor], key: str = "") -> Any:
    """JSON-able structure of ``obj``; tensors (other than 0-d) go into ``tensors[key]``.

    Handles dicts (str or int keys), lists, tuples, numpy arrays and scalars, 0-d tensors (kept
    in JSON with their dtype) and tensors. Anything else is an error naming its path.
    """
    if isinstance(obj, Tensor):
        if obj.ndim == 0:
            return {"__scalar__": obj.item(), "dtype": str(obj.dtype).removeprefix("torch.")}
        if key in tensors:
            raise ValueError(f"two tensors of the state map to the key {key!r}; rename one")
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple | list):
        items = [encode_state(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {
                "__intkeys__": {
                    str(k): encode_state(v, tensors, f"{key}/{k}") for k, v in obj.items()
                }
            }
        if all(isinstance(k, str) for k in obj):
            return {
                "__strkeys__": {k: encode_state(v, tensors, f"{key}/{k}") for k, v in obj.items()}
            }
    raise TypeError(f"cannot store {type(obj).__name__} at '{key or '/'}' in a checkpoint")


def decode_state(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]].clone()  # own memory, not the file's mapping
    if "__scalar__" in obj:
        return torch.tensor(obj["__scalar__"], dtype=getattr(torch, obj["dtype"]))
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
    if "__intkeys__" in obj:
        return {int(k): decode_state(v, tensors) for k, v in obj["__intkeys__"].items()}
    if "__strkeys__" in obj:
        return {k: decode_state(v, tensors) for k, v in obj["__strkeys__"].items()}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


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
