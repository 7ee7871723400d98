"""Training-step time of SFT and GRQO, measured in the same run, and where GRQO's extra time goes.

    python benchmarks/step_time.py [--sizes tiny small] [--steps 12]

For each size, SFT and GRQO steps alternate on the same batches (so load on the machine hits
both alike); each step is forward + backward + AdamW. GRQO's extra work is split into the
reference model's forward and the per-layer rewards. Writes benchmarks/results/step_time.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.build import build_detector
from workbench.objectives import grqo as grqo_module
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.objectives.sft import SFTObjective

SETTINGS = {"tiny": (128, 4), "small": (256, 8)}  # image size, batch size


def batches(image_size: int, batch_size: int, count: int):
    data = ShapesDataset(batch_size * count, seed=0, cfg=ShapesConfig(image_size=image_size))
    out = []
    for k in range(count):
        batch = collate([data[k * batch_size + i] for i in range(batch_size)])
        batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng(k))
        out.append(batch)
    return out


class Stopwatch:
    """Accumulates the time spent in a wrapped function."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def step(model, objective, optimizer, batch, k):
    start = time.perf_counter()
    out = objective(model, batch, StepInfo(k, 0, 100))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(size: str, steps: int) -> dict:
    image_size, batch_size = SETTINGS[size]
    torch.manual_seed(0)
    model = build_detector(size).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sft, grqo = SFTObjective(LossConfig()), GRQOObjective(LossConfig(), GRQOConfig())
    grqo.on_epoch_start(model, 0)
    reference = Stopwatch(grqo.reference_logits)
    grqo.reference_logits = reference
    rewards = Stopwatch(grqo_module.query_rewards)
    grqo_module.query_rewards = rewards
    times = {"sft": [], "grqo": []}
    data = batches(image_size, batch_size, 4)
    for k in range(steps + 2):  # two warm-up rounds
        for name, objective in (("sft", sft), ("grqo", grqo)):
            if k == 2 and name == "grqo":
                reference.seconds = rewards.seconds = 0.0
            seconds = step(model, objective, optimizer, data[k % len(data)], k)
            if k >= 2:
                times[name].append(seconds)
    grqo_module.query_rewards = rewards.fn
    sft_s, grqo_s = statistics.median(times["sft"]), statistics.median(times["grqo"])
    return {
        "image_size": image_size, "batch_size": batch_size, "steps": steps,
        "sft_step_s": sft_s, "grqo_step_s": grqo_s, "grqo_over_sft": grqo_s / sft_s,
        "grqo_reference_forward_s_per_step": reference.seconds / steps,
        "grqo_rewards_s_per_step": rewards.seconds / steps,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    results = {size: measure(size, args.steps) for size in args.sizes}
    for size, r in results.items():
        print(f"{size}: SFT {r['sft_step_s']:.3f} s, GRQO {r['grqo_step_s']:.3f} s, "
              f"ratio {r['grqo_over_sft']:.2f}")  # fmt: skip
    print(write_result("step_time", {"sizes": results}))


if __name__ == "__main__":
    main()
