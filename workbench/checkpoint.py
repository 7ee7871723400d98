"""Checkpoints without pickle, written atomically.

A checkpoint is a directory::

    step_000001200/
      model.safetensors    weights (safetensors.torch.save_model: tied weights stored once)
      state.safetensors    every tensor of the trainer and objective state, keyed by its path
                           ("trainer/optimizer/state/17/exp_avg": parameter 17's first moment)
      state.json           the rest of that state: structure, numbers, strings; tensors appear as
                           {"__tensor__": key}, 0-d tensors (Adam's step counts) as numbers
      checkpoint.json      format, the caller's model config, the full run config, and the size
                           and sha256 of every file above; written last

Nothing here unpickles: loading reads safetensors and JSON only. A file that is a pickle or a
``torch.save`` archive is recognised by its first bytes and refused before anything reads it;
trusted legacy weights go through :func:`load_legacy_state_dict` (``weights_only=True``).

Atomicity: the directory is written under a temporary name beside its target, every file and
the directory are fsync'ed, then one ``os.replace`` renames it into place; a ``latest`` file
(itself replaced atomically) names the newest one. A crash at any moment leaves the previous
checkpoint complete and :func:`find_latest` finds it; half-written temporary directories are
ignored and removed at the next save. A checkpoint of the same name is swapped with the new one in
one step (Linux ``renameat2``); a folder holding any other file is never replaced (it would be
deleted): saving there is refused.

State as JSON plus named tensors (:func:`encode_state` / :func:`decode_state`): 0-d tensors (Adam's
step counts) stay in the JSON as numbers with their dtype, so a resumed optimizer gets the same
dtypes back; tuples, int-keyed dicts and numpy arrays are tagged, because JSON alone would return
them as lists and string-keyed dicts, and an optimizer's state is keyed by int parameter ids. What
a trainer puts in that state is :mod:`workbench.training_state`'s business.

The module knows nothing about the model: the caller passes the architecture config (a JSON-able
dict) and gets it back to rebuild the model before loading the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

FORMAT, VERSION = "dino-r1-workbench/checkpoint", 1
MODEL_FILE, STATE_FILE, STATE_JSON, MANIFEST = (
    "model.safetensors",
    "state.safetensors",
    "state.json",
    "checkpoint.json",
)
CHECKPOINTS, LATEST = "checkpoints", "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns (the weights are already in ``model`` if given).

    ``model_config`` is the dict the caller saved to rebuild the model; ``full_config`` the run's
    resolved configuration; the states are None in a weights-only checkpoint.
    """

    path: Path
    model_config: dict[str, Any]
    full_config: dict[str, Any] | None
    trainer_state: dict[str, Any] | None
    objective_state: dict[str, Any] | None


# --- writing ---------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    _fsync(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _own_memory(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied weights in an objective's reference
    model, views of one buffer): each such tensor is stored as its own copy."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        out[key] = t.clone() if storage.data_ptr() in seen or not whole else t
        if storage.nbytes():
            seen.add(storage.data_ptr())
    return out


def _write_contents(
    tmp: Path,
    model: nn.Module,
    config_dict: dict[str, Any],
    state: dict[str, Any] | None,
    full_config: dict[str, Any] | None,
) -> None:
    save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    _fsync(tmp / MODEL_FILE)
    if state is not None:
        tensors: dict[str, Tensor] = {}
        structure = encode_state(state, tensors)
        save_file(_own_memory(tensors), str(tmp / STATE_FILE), metadata={"format": "pt"})
        _fsync(tmp / STATE_FILE)
        _write_json(tmp / STATE_JSON, structure)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
    }
    manifest = {"format": FORMAT, "version": VERSION, "model_config": config_dict}
    _write_json(tmp / MANIFEST, manifest | {"full_config": full_config, "files": files})
    _fsync(tmp)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config_dict: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    objective_state: dict[str, Any] | None = None,
    *,
    full_config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing a checkpoint of the same name; a
    non-empty folder that is not one is refused) and return it.

    ``model``'s state_dict goes to safetensors (unwrap DDP first); ``config_dict`` is what the
    caller needs to rebuild the model; states may hold tensors, numbers, strings, lists, tuples,
    dicts and numpy arrays.
    """
    final = Path(directory)
    _check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = None
    if trainer_state is not None or objective_state is not None:
        state = {"trainer": trainer_state, "objective": objective_state}
    try:
        _write_contents(tmp, model, dict(config_dict), state, full_config)
        if final.exists():  # a checkpoint (or empty folder) of that name: swap, drop the old
            _exchange(tmp, final)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _check_replaceable(final: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder, or a checkpoint holding only the
    files a checkpoint has: a save must never delete a file it did not write."""
    if not final.exists():
        return
    if not final.is_dir():
        raise CheckpointError(f"{final} is a file; save the checkpoint to a folder path")
    names = {p.name for p in final.iterdir()}
    if not names:
        return
    foreign = sorted(names - {MODEL_FILE, STATE_FILE, STATE_JSON, MANIFEST})
    try:
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        ours = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    except (OSError, ValueError):
        ours = False
    if ours and not foreign:
        return
    held = ", ".join(sorted(foreign or names)[:4]) + (", ..." if len(foreign or names) > 4 else "")
    kind = "also holds" if ours else "is not a saved detector or checkpoint; it holds"
    raise CheckpointError(
        f"{final} {kind} {held}, which saving would delete; save to a new or empty folder, or "
        "move those files elsewhere first"
    )


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE), so a reader of ``b``
    sees the old or the new one, never none; elsewhere two renames."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    except (OSError, AttributeError):  # no renameat2 in this C library
        pass
    aside = b.with_name(f".old-{b.name}-{os.getpid()}")
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint after ``step`` optimizer steps lives: run_dir/checkpoints/step_N."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:09d}"


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        match = _STEP_DIR.match(p.name)
        if match and (p / MANIFEST).is_file():
            found.append((int(match.group(1)), p))
    return sorted(found)


def save_run_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    config_dict: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    objective_state: dict[str, Any] | None = None,
    *,
    full_config: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """:func:`save_checkpoint` to ``checkpoint_path(run_dir, step)``, point ``latest`` at it and
    keep the ``keep`` newest (``keep <= 0``: all). Checkpoints of later steps than ``step`` (left
    by a run that was resumed from an earlier point) are removed: they belong to an abandoned
    continuation."""
    path = save_checkpoint(
        checkpoint_path(run_dir, step),
        model,
        config_dict,
        trainer_state,
        objective_state,
        full_config=full_config,
    )
    root = path.parent
    pointer = root / f".{LATEST}.tmp-{os.getpid()}"
    pointer.write_text(path.name + "\n", encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, root / LATEST)
    _fsync(root)
    older = [p for s, p in _step_dirs(root) if s < step]
    stale = [p for s, p in _step_dirs(root) if s > step]
    stale += older[: max(0, len(older) - keep + 1)] if keep > 0 else []
    stale += [p for p in root.iterdir() if p.name.startswith((".tmp-", ".old-")) and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return path


# --- finding and reading ---------------------------------------------------------------------


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir`` (or its ``checkpoints/``), or None.

    The ``latest`` pointer wins while it names a complete checkpoint; otherwise the highest step.
    """
    root = Path(run_dir)
    if (root / CHECKPOINTS).is_dir():
        root = root / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if (target / MANIFEST).is_file():
            return target
    found = _step_dirs(root)
    return found[-1][1] if found else None


def _refuse_pickle(path: Path) -> None:
    """Raise if ``path`` starts like a pickle or a torch.save zip archive (and not like
    safetensors: an 8-byte little-endian header length, then ``{``). Reads 9 bytes only."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32):
        return
    if head[:2] == b"PK" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        kind = "a torch.save zip archive" if head[:2] == b"PK" else "a Python pickle"
        raise CheckpointError(
            f"{path} is {kind}. Loading it would run any code it contains, so it is refused. "
            "If you trust its origin, read its tensors with "
            "workbench.checkpoint.load_legacy_state_dict(path) (torch.load with "
            "weights_only=True) and save them with save_checkpoint."
        )


def _check_file(path: Path, expected: dict[str, Any] | None, verify: bool) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the checkpoint is incomplete. Resume from another one "
            f"(find_latest picks the newest complete checkpoint) or delete {path.parent}."
        )
    _refuse_pickle(path)
    if expected is None:
        return
    size, recorded = path.stat().st_size, expected["bytes"]
    if size != recorded:
        problem = f"{size} bytes where the checkpoint recorded {recorded}: truncated"
    elif verify and _sha256(path) != expected["sha256"]:
        problem = "its sha256 differs from the one recorded: corrupted"
    else:
        return
    raise CheckpointError(
        f"{path} is damaged ({problem}). Delete {path.parent} and resume from an earlier "
        "checkpoint (find_latest picks the newest complete one)."
    )


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt. "
            f"Delete {path.parent} and resume from an earlier checkpoint."
        ) from err


def load_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, device: str | torch.device = "cpu"
) -> None:
    """Load a safetensors weights file into ``model``, checking names and shapes first."""
    path = Path(path)
    _check_file(path, None, False)
    in_file = _tensor_shapes(path)
    in_model = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    common = sorted(in_file.keys() & in_model.keys())
    wrong = [
        f"{k}: file {in_file[k]}, model {in_model[k]}" for k in common if in_file[k] != in_model[k]
    ]
    if wrong:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: {len(wrong)} tensors differ in shape "
            f"({'; '.join(wrong[:4])}). Build the model from the checkpoint's model_config "
            f"({path.parent / MANIFEST}) rather than from the current settings."
        )
    try:
        load_model(model, str(path), strict=strict, device=str(device))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: {err}. Build the model from the "
            f"checkpoint's model_config, or pass strict=False to load the matching part."
        ) from err


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{directory / MANIFEST} is unreadable ({err}); delete {directory} and resume from "
            "an earlier checkpoint"
        ) from err
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{directory / MANIFEST} is not a {FORMAT} v{VERSION} checkpoint "
            f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    return manifest


def saved_full_config(path: str | Path) -> dict[str, Any] | None:
    """The run config saved with the checkpoint at ``path`` (a run folder: its latest), read
    from its manifest only (no tensor is loaded)."""
    return _read_manifest(_resolve(Path(path))).get("full_config")


def _resolve(path: Path) -> Path:
    if path.is_dir() and not (path / MANIFEST).is_file():
        latest = find_latest(path)
        if latest is None:
            raise CheckpointError(
                f"no checkpoint in {path}: expected {MANIFEST} there or step_*/ directories "
                f"under {path / CHECKPOINTS}"
            )
        return latest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a checkpoint directory")
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    strict: bool = True,
    device: str | torch.device = "cpu",
    verify: bool = True,
) -> Checkpoint:
    """Read a checkpoint (a directory, a run directory meaning its latest, or a bare
    ``.safetensors`` weights file) and load the weights into ``model`` if given.

    ``verify`` checks every file's sha256 against the manifest (sizes are always checked).
    Pickle files are refused without being read.
    """
    path = _resolve(Path(path))
    if path.is_file():
        _check_file(path, None, False)
        if model is not None:
            load_weights(model, path, strict=strict, device=device)
        return Checkpoint(path, {}, None, None, None)
    manifest = _read_manifest(path)
    files = manifest.get("files", {})
    for name in files:
        _check_file(path / name, files[name], verify)
    if MODEL_FILE not in files:
        raise CheckpointError(f"{path / MANIFEST} lists no {MODEL_FILE}; the checkpoint is broken")
    if model is not None:
        load_weights(model, path / MODEL_FILE, strict=strict, device=device)
    state: dict[str, Any] = {"trainer": None, "objective": None}
    if STATE_JSON in files:
        _tensor_shapes(path / STATE_FILE)  # a clear error for a damaged file
        tensors = load_file(str(path / STATE_FILE))
        structure = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        state = decode_state(structure, tensors)
    return Checkpoint(
        path,
        manifest["model_config"],
        manifest.get("full_config"),
        state["trainer"],
        state["objective"],
    )


def load_legacy_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a trusted ``.pth``/``.pt`` file, read with ``torch.load(weights_only=True)``:
    only tensors and plain containers are unpickled; any other object is refused. A
    ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper (DETR, mmdet) is unwrapped."""
    import pickle

    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds objects other than tensors; refused (weights_only=True): {err}"
        ) from err
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return data
