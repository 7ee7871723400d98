"""Store a trained detector compactly: weights only, in float16 (half the size of float32).

    python -m workbench.model.export runs/app_default_sft models/sft
    python -m workbench.model.export OLD_EXPORT NEW_EXPORT --config configs/app_default_sft.yaml

The result is a checkpoint folder like any other: ``from_pretrained`` and
``Predictor.from_checkpoint`` load it, and the weights return to float32 on load. The optimizer
and trainer state are dropped; the run config travels with the weights (its input size and GRQO
settings are what the Predictor, the app and FiftyOne read). A source that records no run config
(an export made before exports kept it) takes the one given with ``--config``. An existing
detector at the target is replaced only with ``--force`` (atomically); a folder holding anything
else, or the source itself, never.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from workbench.checkpoint import CheckpointError, saved_full_config
from workbench.config import Config, ConfigError, load_config, to_dict
from workbench.model.build import from_pretrained, save_pretrained
from workbench.safe_paths import OutputError, refuse_existing


def export_half(
    source: str | Path, target: str | Path, *, force: bool = False, config: Config | None = None
) -> Path:
    """Copy the detector at ``source`` (run, checkpoint or folder) to ``target`` in float16,
    with the run config ``source`` records, or ``config`` when it records none.

    A non-empty ``target`` is refused unless ``force`` and it is a saved detector (then it is
    replaced atomically); ``target`` may never be ``source`` or lie inside it. A ``config`` for a
    source that records its own is refused: the source's record is the truth.
    """
    source, target = Path(source), Path(target)
    if target.resolve().is_relative_to(source.resolve()):
        raise OutputError(f"target {target} is the source {source} or inside it; choose another")
    if not force and target.is_dir() and any(target.iterdir()):
        refuse_existing([target], setting="target")
    record = None if source.is_file() else saved_full_config(source)
    if record is not None and config is not None:
        raise ConfigError(
            f"{source} records the config of its run already; export it without a config"
        )
    model = from_pretrained(source)
    run = record if record is not None else (to_dict(config) if config is not None else None)
    return save_pretrained(model.to(torch.float16), target, config=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--force", action="store_true", help="replace a detector at target")
    parser.add_argument(
        "--config", help="YAML config the source was trained with, if it records none"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else None
        path = export_half(args.source, args.target, force=args.force, config=config)
    except (OutputError, CheckpointError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote {path} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
