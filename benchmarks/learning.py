"""Does GRQO beat SFT here? Equal budgets, several seeds, ablations, AP against steps.

    python benchmarks/learning.py --preset quick     # the tiny model, ~5 min on two cores
    python benchmarks/learning.py --preset tiny3     # tiny, 3 seeds: shapes with the ablations,
                                                     # BCCD SFT vs GRQO (~1.5 h)
    python benchmarks/learning.py --preset tiny3_long  # shapes, 12 epochs, SFT vs GRQO (~30 min)
    python benchmarks/learning.py --preset full      # small model, shapes + BCCD, 3 seeds (GPU-days
                                                     # on CPU: run it on a real machine)

Each variant trains from the same initial weights (the seed) for the same number of steps: SFT
for N+1 epochs against GRQO's "1+N" (one epoch of SFT warm-up, then N of GRQO), as in the paper.
The headline number is cross-image AP on the categories held out of training (shapes' novel
split) and, for BCCD, cross-image AP. Writes benchmarks/results/learning_<preset>.json (per run:
final AP, AP against steps; per variant: mean and std over seeds; GRQO minus SFT with its spread)
and a PNG of the AP curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_dir, write_result

from workbench.config import load_config, to_dict
from workbench.experiment import train
from workbench.plots import read_metrics

GRQO = "configs/tiny_shapes_grqo.yaml"
TINY = [  # one epoch = 64 steps of 4 images; evaluated after every epoch
    "data.shapes_train_images=256",
    "data.shapes_val_images=64",
    "eval.max_images=64",
    "eval.protocols=[cross_image]",
    "train.epochs=4",
    "train.checkpoint_every=1000",
    "train.eval_every_epochs=1",
    "train.log_every=20",
]
VARIANTS = {
    "sft": ("configs/tiny_shapes_sft.yaml", []),
    "grqo": (GRQO, ["grqo.warmup_epochs=1"]),
    "grqo_no_kl": (GRQO, ["grqo.warmup_epochs=1", "grqo.kl=false"]),
    "grqo_no_mute": (GRQO, ["grqo.warmup_epochs=1", "grqo.mute=0"]),
}
TINY_BCCD = [  # one epoch = 52 steps of 4 images at 256 px; evaluated after every epoch
    "data.name=bccd",
    "data.min_size=256",
    "data.max_size=342",
    "eval.protocols=[cross_image]",
    "train.epochs=6",
    "train.checkpoint_every=1000",
    "train.eval_every_epochs=1",
    "train.log_every=20",
]
SFT_GRQO = ["sft", "grqo"]
PRESETS = {  # runs: dataset -> (overrides, variants)
    "quick": {"seeds": [0], "runs": {"shapes": (TINY, SFT_GRQO)}},
    "tiny3": {
        "seeds": [0, 1, 2],
        "runs": {"shapes": (TINY, list(VARIANTS)), "bccd": (TINY_BCCD, SFT_GRQO)},
    },
    "tiny3_long": {  # the shapes arm of tiny3 trained three times longer, SFT against GRQO
        "seeds": [0, 1, 2],
        "runs": {"shapes": ([*TINY, "train.epochs=12", "train.eval_every_epochs=2"], SFT_GRQO)},
    },
    "full": {
        "seeds": [0, 1, 2],
        "runs": {
            "shapes": (["model.size=small", "train.epochs=6"], list(VARIANTS)),
            "bccd": (["model.size=small", "data.name=bccd", "train.epochs=12"], list(VARIANTS)),
        },
    },
}
HEADLINE = {"shapes": "cross_image/AP_novel", "bccd": "cross_image/AP"}


def curve(run_dir: Path) -> list[dict]:
    """``[{step, epoch, metrics...}]`` of every evaluation the trainer logged."""
    points = []
    for record in read_metrics(run_dir):
        evals = {k[5:]: v for k, v in record.items() if k.startswith("eval/")}
        if evals:
            points.append({"step": record["step"], "epoch": record["epoch"], **evals})
    return points


def run_one(dataset: str, overrides: list[str], variant: str, seed: int, root: Path) -> dict:
    config, extra = VARIANTS[variant]
    out = root / f"{dataset}_{variant}_seed{seed}"
    cfg = load_config(config, [*overrides, *extra, f"train.seed={seed}", f"train.out_dir={out}"])
    start = time.perf_counter()
    summary = train(cfg, resume=True)  # an interrupted benchmark continues where it stopped
    points = curve(out)
    return {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "steps": summary["global_step"],
        "seconds": time.perf_counter() - start,
        "final": points[-1] if points else {},
        "curve": points,
        "config": to_dict(cfg),
    }


def aggregate(runs: list[dict]) -> dict:
    """Mean and std over seeds per (dataset, variant), and GRQO minus SFT per seed."""
    table: dict = {}
    for r in runs:
        key = HEADLINE[r["dataset"]]
        table.setdefault(r["dataset"], {}).setdefault(r["variant"], {})[r["seed"]] = r["final"].get(
            key
        )
    summary = {}
    for dataset, variants in table.items():
        rows = {}
        for variant, by_seed in variants.items():
            values = [v for v in by_seed.values() if v is not None]
            rows[variant] = {
                "metric": HEADLINE[dataset],
                "values": by_seed,
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        if "sft" in variants and "grqo" in variants:
            diffs = [
                variants["grqo"][s] - variants["sft"][s]
                for s in variants["sft"]
                if s in variants["grqo"]
            ]
            rows["grqo_minus_sft"] = {
                "per_seed": diffs,
                "mean": statistics.fmean(diffs),
                "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            }
        summary[dataset] = rows
    return summary


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    colours = {v: f"C{i}" for i, v in enumerate(VARIANTS)}  # one colour per variant
    styles = ["-", "--", ":", "-."]  # one line style per seed
    for ax, dataset in zip(axes[0], datasets, strict=True):
        key = HEADLINE[dataset]
        for r in (r for r in runs if r["dataset"] == dataset):
            xs = [p["step"] + 1 for p in r["curve"]]
            ax.plot(
                xs,
                [p.get(key) for p in r["curve"]],
                marker="o",
                alpha=0.8,
                color=colours[r["variant"]],
                linestyle=styles[r["seed"] % len(styles)],
                label=f"{r['variant']} seed {r['seed']}",
            )
        ax.set(title=f"{dataset}: {key}", xlabel="training steps", ylabel="AP")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=list(PRESETS), default="quick")
    parser.add_argument("--runs-dir", default="runs/learning")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    runs = []
    for dataset, (overrides, variants) in preset["runs"].items():
        for seed in preset["seeds"]:
            for variant in variants:
                runs.append(run_one(dataset, overrides, variant, seed, Path(args.runs_dir)))
                print(variant, seed, runs[-1]["final"].get(HEADLINE[dataset]), flush=True)
    summary = aggregate(runs)
    plot(runs, results_dir() / f"learning_{args.preset}.png")
    print(json.dumps(summary, indent=2))
    print(
        write_result(
            f"learning_{args.preset}", {"preset": args.preset, "summary": summary, "runs": runs}
        )
    )


if __name__ == "__main__":
    main()
