"""Train a config end to end on this machine, evaluate it, record AP and time as JSON.

    python benchmarks/train_run.py configs/small_shapes_sft.yaml [key=value ...] [--name NAME]

Writes ``benchmarks/results/train_<config>.json``: AP, AP50, base / novel AP under both
protocols, training time, steps, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timer, write_result

from workbench.config import load_config, to_dict
from workbench.experiment import open_splits, run_evaluation, train
from workbench.model.build import from_pretrained


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--name")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    cpu_start = time.process_time()
    with Timer() as timer:
        summary = train(cfg, overwrite=True)  # a previous run there is moved aside
    train_cpu = time.process_time() - cpu_start
    _, val, pool = open_splits(cfg)
    with Timer() as eval_timer:
        results = run_evaluation(from_pretrained(cfg.train.out_dir), cfg, val, pool)
    name = args.name or f"train_{Path(args.config).stem}"
    path = write_result(
        name,
        {
            "config": args.config,
            "overrides": args.overrides,
            "seed": cfg.train.seed,
            "train_seconds": timer.seconds,
            "train_cpu_seconds": train_cpu,
            "eval_seconds": eval_timer.seconds,
            "steps": summary["global_step"],
            "images_per_step": cfg.train.batch_size,
            "results": {
                p: {
                    "stats": r.scalars(),
                    "split_stats": r.split_stats,
                    "images": r.to_dict().get("num_images"),
                }
                for p, r in results.items()
            },
            "resolved_config": to_dict(cfg),
        },
    )
    print(json.dumps({p: r.scalars() for p, r in results.items()}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
