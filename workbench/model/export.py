"""Store a trained detector compactly: weights only, in float16 (half the size of float32).

    python -m workbench.model.export runs/app_default_sft models/sft

The result is a checkpoint folder like any other: ``from_pretrained`` and
``Predictor.from_checkpoint`` load it, and the weights return to float32 on load. The optimizer
and trainer state are dropped. An existing detector at the target is replaced only with
``--force`` (atomically); a folder holding anything else, or the source itself, never.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from workbench.checkpoint import CheckpointError
from workbench.model.build import from_pretrained, save_pretrained
from workbench.safe_paths import OutputError, refuse_existing


def export_half(source: str | Path, target: str | Path, *, force: bool = False) -> Path:
    """Copy the detector at ``source`` (run, checkpoint or folder) to ``target`` in float16.

    A non-empty ``target`` is refused unless ``force`` and it is a saved detector (then it is
    replaced atomically); ``target`` may never be ``source`` or lie inside it.
    """
    source, target = Path(source), Path(target)
    if target.resolve().is_relative_to(source.resolve()):
        raise OutputError(f"target {target} is the source {source} or inside it; choose another")
    if not force and target.is_dir() and any(target.iterdir()):
        refuse_existing([target], setting="target")
    model = from_pretrained(source)
    return save_pretrained(model.to(torch.float16), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--force", action="store_true", help="replace a detector at target")
    args = parser.parse_args(argv)
    try:
        path = export_half(args.source, args.target, force=args.force)
    except (OutputError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote {path} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
