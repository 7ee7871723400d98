"""A training run's folder: what the trainer writes there, and when it may start, continue or
replace a run in it.

A folder holds a run when any file the trainer writes is there (``RUN_FILES``). Then:

- a new run is refused: it would replace the old run's ``config.yaml``, drop its later
  checkpoints and append a second history to its ``metrics.jsonl``;
- ``resume`` continues it, but only with the settings it was saved with: a changed
  hyper-parameter is refused with the list of differences unless ``allow_changes``, which applies
  them (the trainer then sets the new learning rate and weight decay on the restored optimizer).
  Settings that change how long a run lasts, where and how often it logs, saves and evaluates
  (``MAY_CHANGE_ON_RESUME``) may differ: they change no optimizer step already taken;
- ``overwrite`` moves the whole folder aside to ``NAME.old-N`` (nothing is deleted) and starts
  the run in an empty folder of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench import checkpoint as ckpt
from workbench.safe_paths import OutputError, move_aside

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard")
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "train.max_steps",
        "train.max_minutes",
        "train.epochs",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.eval_every_epochs",
        "train.max_nonfinite_streak",
        "train.device",
        "train.out_dir",
        "data.num_workers",
    }
)
_MAY_CHANGE_SECTIONS = ("eval.",)  # evaluation settings never touch the weights


class RunFolderError(OutputError):
    """A run folder cannot be used as asked; the message names it and the flag that allows it."""


def run_files(run_dir: str | Path, names: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Which of ``names`` (default ``RUN_FILES``) are in ``run_dir``; none: it holds no run."""
    run_dir = Path(run_dir)
    return [name for name in names if (run_dir / name).exists()] if run_dir.is_dir() else []


def _describe(run_dir: Path, files: list[str]) -> str:
    latest = ckpt.find_latest(run_dir)
    saved = f"checkpoints up to {latest.name}" if latest is not None else "no checkpoint"
    return f"{', '.join(files)}; {saved}"


def prepare(
    run_dir: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    files: tuple[str, ...] = RUN_FILES,
    move: bool = True,
) -> Path | None:
    """Check that a run may start or continue in ``run_dir``; with ``overwrite`` (and ``move``:
    False only checks), move an existing run aside and return where it went (else None).

    Raises a :class:`RunFolderError` when ``run_dir`` holds any of ``files`` and neither
    ``resume`` nor ``overwrite`` is given. Under torchrun only the first process (RANK 0)
    checks and moves: the others would see its half-done work.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderError(
            "--resume continues the run in train.out_dir and --overwrite moves it aside: pass one"
        )
    if os.environ.get("RANK", "0") != "0":  # under torchrun the first process decides
        return None
    found = run_files(run_dir, files)
    if resume or not found:
        return None
    if overwrite:
        return move_aside(run_dir) if move else None
    raise RunFolderError(
        f"train.out_dir={run_dir} already holds a run ({_describe(run_dir, found)}); pass "
        f"--resume to continue it, --overwrite to move it to {run_dir.name}.old-N and start "
        "again, or choose another train.out_dir"
    )


def require_run(run_dir: str | Path) -> None:
    """Raise unless ``run_dir`` holds a run to resume (a typo must not start a new run)."""
    if not run_files(run_dir):
        state = "does not exist" if not Path(run_dir).exists() else "holds no run"
        raise RunFolderError(
            f"--resume: train.out_dir={run_dir} {state} (no checkpoints/, config.yaml or "
            "metrics.jsonl); set train.out_dir to the run's folder, or drop --resume to start "
            "a new run"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``["train.lr: 0.0001 -> 0.001", ...]``: the settings of ``current`` (a nested config
    dict) that differ from ``saved``, other than those a resumed run may change. A setting only
    one side has (added to or removed from the code since the checkpoint) is not compared."""
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key in sorted(old.keys() & new.keys()):
        if key in MAY_CHANGE_ON_RESUME or key.startswith(_MAY_CHANGE_SECTIONS):
            continue
        if old[key] != new[key]:
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return changes


def check_changes(
    saved: dict[str, Any] | None, current: dict[str, Any], source: Path | str, *, allow: bool
) -> list[str]:
    """The changes from ``saved`` (the config of the checkpoint at ``source``) to ``current``;
    raise a :class:`RunFolderError` listing them unless ``allow``."""
    changes = config_changes(saved, current) if saved is not None else []
    if changes and not allow:
        more = f"; and {len(changes) - 8} more" if len(changes) > 8 else ""
        shown = "; ".join(changes[:8]) + more
        raise RunFolderError(
            f"--resume: the settings differ from those {source} was saved with ({shown}); "
            "resume with the run's settings, pass --allow-changes to apply the new ones, or "
            "start a new run in another train.out_dir"
        )
    return changes


def check_resume_config(run_dir: str | Path, current: dict[str, Any], *, allow: bool) -> None:
    """:func:`check_changes` against the latest checkpoint in ``run_dir``, if there is one."""
    latest = ckpt.find_latest(run_dir)
    if latest is not None:
        check_changes(ckpt.saved_full_config(latest), current, latest, allow=allow)
