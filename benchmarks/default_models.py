"""Publish the app's default models: float16 copies of two runs, with their recorded evaluation.

    python benchmarks/default_models.py --sft runs/app_default_sft --grqo runs/app_default_grqo

Exports both runs to ``models/sft`` and ``models/grqo`` (float16 safetensors), evaluates the
exported weights (COCO AP, both protocols) on the bundled held-out examples (``examples/``: shapes
and BCCD images none of the runs trained on) and on the mixture's validation split, and writes
``models/defaults.json`` (what tests/test_default_models.py re-checks) and
``benchmarks/results/default_models.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from workbench.config import load_config
from workbench.data.coco import CocoDetection
from workbench.evaluation import evaluate
from workbench.experiment import open_splits, run_evaluation
from workbench.model.export import export_half
from workbench.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"shapes": REPO / "examples" / "shapes", "bccd": REPO / "examples" / "bccd"}
SIZE = {"min_size": 256, "max_size": 342}  # the resolution both runs trained at


def evaluate_examples(predictor: Predictor) -> dict:
    """AP of each bundled example set under both protocols (cross-image exemplars come from the
    set's other images)."""
    out = {}
    for name, folder in EXAMPLES.items():
        data = CocoDetection(folder / "annotations.json")
        for protocol in ("interactive", "cross_image"):
            result = evaluate(predictor, data, protocol=protocol, seed=0)
            out[f"{name}/{protocol}"] = {"AP": result.AP, "AP50": result.AP50}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft", default="runs/app_default_sft")
    parser.add_argument("--grqo", default="runs/app_default_grqo")
    parser.add_argument("--out", default=str(REPO / "models"))
    args = parser.parse_args()
    record = {"resolution": SIZE, "models": {}}
    for key, run in (("sft", args.sft), ("grqo", args.grqo)):
        folder = export_half(run, Path(args.out) / key)
        predictor = Predictor.from_checkpoint(folder, device="cpu", **SIZE)
        cfg = load_config(Path(run) / "config.yaml")
        _, val, pool = open_splits(cfg)
        val_results = run_evaluation(predictor, cfg, val, pool)
        record["models"][key] = {
            "run": run,
            "config": f"configs/app_default_{key}.yaml",
            "seed": cfg.train.seed,
            "command": f"python -m workbench train configs/app_default_{key}.yaml",
            "size_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
            "examples": evaluate_examples(predictor),
            "validation": {p: r.scalars() for p, r in val_results.items()},
        }
    (Path(args.out) / "defaults.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v["examples"] for k, v in record["models"].items()}, indent=2))
    print(write_result("default_models", record))


if __name__ == "__main__":
    main()
