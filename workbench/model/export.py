"""Store a trained detector compactly: weights only, in float16 (half the size of float32).

    python -m workbench.model.export runs/app_default_sft models/sft

The result is a checkpoint folder like any other: ``from_pretrained`` and
``Predictor.from_checkpoint`` load it, and the weights return to float32 on load. The optimizer
and trainer state are dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from workbench.model.build import from_pretrained, save_pretrained


def export_half(source: str | Path, target: str | Path) -> Path:
    """Copy the detector at ``source`` (run, checkpoint or folder) to ``target`` in float16."""
    model = from_pretrained(source)
    return save_pretrained(model.to(torch.float16), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    args = parser.parse_args(argv)
    path = export_half(args.source, args.target)
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote {path} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
