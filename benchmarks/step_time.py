"""Training-step time of SFT and GRQO, measured in the same run, and where GRQO's extra time goes.

    python benchmarks/step_time.py [--sizes tiny small] [--steps 12] [--threads N]
                                   [--no-reference-bf16]

For each size, SFT and GRQO steps alternate on the same batches (so load on the machine hits
both alike); each step is forward + backward + AdamW. GRQO's extra work is split into the
reference model's forward and the per-layer rewards; GRQO with ``grqo.reference_features=policy``
(a documented deviation: the reference reuses the policy's image features) runs in the same
rotation. Writes benchmarks/results/step_time.json; ``benchmarks/before_after.py step_time``
compares it with an earlier commit's code.

``reference_bf16`` (per size): the GRQO reference forward alone, in float32 and under bf16
autocast in turns on the same batches (the policy's selected tokens, the same exemplar draws):
seconds per call and how far the reference's objectness (sigmoid of its selection logits) moves,
with whether the CPU has bf16 units. A bf16 reference is worth a switch only where it is faster
and the objectness (which the KL compares) stays close.
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
from common import machine, write_result

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.build import build_detector
from workbench.objectives import grqo as grqo_module
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.objectives.sft import SFTObjective, run_detector

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


def _grqo_config(**changes) -> GRQOConfig:
    """The released GRQO settings, without the periodic gradient-share measurement (three extra
    backward passes every ``grqo.grad_norm_every`` steps, which this benchmark leaves out)."""
    if "grad_norm_every" in GRQOConfig.__dataclass_fields__:
        changes.setdefault("grad_norm_every", 0)
    return GRQOConfig(**changes)


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
    objectives = {
        "sft": SFTObjective(LossConfig()),
        "grqo": GRQOObjective(LossConfig(), _grqo_config()),
    }
    if "reference_features" in GRQOConfig.__dataclass_fields__:  # the documented deviation
        objectives["grqo_policy_features"] = GRQOObjective(
            LossConfig(), _grqo_config(reference_features="policy")
        )
    grqo = objectives["grqo"]
    for objective in objectives.values():
        if hasattr(objective, "on_epoch_start"):
            objective.on_epoch_start(model, 0)
    reference = Stopwatch(grqo.reference_logits)
    grqo.reference_logits = reference
    rewards = Stopwatch(grqo_module.query_rewards)
    grqo_module.query_rewards = rewards
    times = {name: [] for name in objectives}
    data = batches(image_size, batch_size, 4)
    for k in range(steps + 2):  # two warm-up rounds
        for name, objective in objectives.items():
            if k == 2 and name == "grqo":
                reference.seconds = rewards.seconds = 0.0
            seconds = step(model, objective, optimizer, data[k % len(data)], k)
            if k >= 2:
                times[name].append(seconds)
    grqo_module.query_rewards = rewards.fn
    median = {name: statistics.median(t) for name, t in times.items()}
    out = {
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "sft_step_s": median["sft"],
        "grqo_step_s": median["grqo"],
        "grqo_over_sft": median["grqo"] / median["sft"],
        "grqo_reference_forward_s_per_step": reference.seconds / steps,
        "grqo_rewards_s_per_step": rewards.seconds / steps,
    }
    if "grqo_policy_features" in median:
        out["grqo_policy_features_step_s"] = median["grqo_policy_features"]
        out["grqo_policy_features_over_sft"] = median["grqo_policy_features"] / median["sft"]
    return out


def reference_bf16(size: str, repeats: int = 3) -> dict:
    """GRQO's reference forward in float32 and under bf16 autocast, alternated on the same
    batches: median seconds per call, and the largest and mean absolute change of its
    objectness."""
    image_size, batch_size = SETTINGS[size]
    torch.manual_seed(0)
    model = build_detector(size).train()
    grqo = GRQOObjective(LossConfig(), _grqo_config())
    grqo.on_epoch_start(model, 0)
    times: dict[bool, list[float]] = {False: [], True: []}
    changes = []  # per call: |objectness in bf16 - in float32| at every selected token
    for k, batch in enumerate(batches(image_size, batch_size, 3) * (repeats + 1)):
        with torch.no_grad():
            policy_step = run_detector(model, batch)
        info = StepInfo(k, 0, 100)
        scores = {}
        for bf16 in (False, True):
            torch.manual_seed(k)  # the same exemplar draw and dropout for both precisions
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                scores[bf16] = grqo.reference_logits(model, batch, policy_step, info).float()
            if k >= 3:  # the first round warms up
                times[bf16].append(time.perf_counter() - start)
        changes.append((scores[True].sigmoid() - scores[False].sigmoid()).abs())
    fp32, bf16 = (statistics.median(times[b]) for b in (False, True))
    change = torch.cat([c.flatten() for c in changes])
    return {
        "cpu_bf16_units": any("bf16" in f for f in machine()["cpu_flags"]),
        "fp32_s": fp32,
        "bf16_s": bf16,
        "bf16_over_fp32": bf16 / fp32,
        "objectness_abs_change_max": float(change.max()),
        "objectness_abs_change_mean": float(change.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--no-reference-bf16", action="store_true", help="skip the bf16 reference comparison"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {size: measure(size, args.steps) for size in args.sizes}
    for size, r in results.items():
        print(
            f"{size}: SFT {r['sft_step_s']:.3f} s, GRQO {r['grqo_step_s']:.3f} s, "
            f"ratio {r['grqo_over_sft']:.2f}"
        )
        if not args.no_reference_bf16:
            r["reference_bf16"] = ref = reference_bf16(size)
            print(
                f"  reference forward: float32 {ref['fp32_s']:.3f} s, bf16 {ref['bf16_s']:.3f} s; "
                f"objectness moves by up to {ref['objectness_abs_change_max']:.3f}"
            )
    print(write_result("step_time", {"sizes": results}))


if __name__ == "__main__":
    main()
