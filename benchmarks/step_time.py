"""Training-step time of SFT and GRQO, measured in the same run, and where GRQO's extra time goes.

    python benchmarks/step_time.py [--sizes tiny small] [--steps 12] [--threads N]
                                   [--no-reference-bf16] [--compile] [--frozen-blocks 4]
                                   [--image-size PX --batch-size B]

For each size, SFT and GRQO steps alternate on the same batches (so load on the machine hits
both alike); each step is forward + backward + AdamW. GRQO's extra work is split into the
reference model's forward and the per-layer rewards; GRQO with ``grqo.reference_features=policy``
(a documented deviation: the reference reuses the policy's image features) runs in the same
rotation, and so do SFT and GRQO under bf16 autocast (``train.amp=bf16``: ``sft_bf16_step_s``,
``grqo_bf16_step_s``; ``..._loss_abs_change``: how far bf16 moves the loss of one step at the
same weights, batch and seed), and SFT under bf16 autocast with deformable attention on the torch
path (``sft_bf16_torch_sampling_step_s``: the fused kernel took float32 only before, so this is
how ``train.amp=bf16`` ran then).
``--compile`` adds an SFT step of a second copy of the model with its backbone, then its
encoder layers, wrapped in ``torch.compile`` (``sft_compiled_<part>_step_s``; the first call's
seconds, which include the compilation, as ``..._first_step_s``). For a MobileNetV2 size
(``small``), a second copy of the model with its first ``--frozen-blocks`` backbone blocks frozen
(``train.frozen_backbone_blocks``; 0: no copy) takes SFT and GRQO steps in the same rotation
(``sft_frozen_step_s``, ``grqo_frozen_step_s``; its GRQO reference continues from the policy's
frozen blocks' output). ``--image-size`` / ``--batch-size`` replace a size's 256 px, batch 8
(128 px, 4 for ``tiny``). Writes
benchmarks/results/step_time.json; ``benchmarks/before_after.py step_time`` compares it with an
earlier commit's code.

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
from common import machine, shapes_config, write_result

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model import deformable
from workbench.model.build import build_detector
from workbench.objectives import grqo as grqo_module
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.objectives.sft import SFTObjective, run_detector

SETTINGS = {"tiny": (128, 4), "small": (256, 8)}  # image size, batch size


def batches(image_size: int, batch_size: int, count: int):
    # The default shapes (20-64 px objects) need 128 px or more; smaller images scale them.
    cfg = ShapesConfig(image_size=image_size) if image_size >= 128 else shapes_config(image_size)
    data = ShapesDataset(batch_size * count, seed=0, cfg=cfg)
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


def step(model, objective, optimizer, batch, k, amp: bool = False):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):  # as train.amp=bf16 does
        out = objective(model, batch, StepInfo(k, 0, 100))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def bf16_loss_change(model, objective, batch) -> float:
    """|loss under bf16 autocast - loss in float32| for one forward at the same weights, batch
    and random draws (prompts, denoising, dropout)."""
    loss = {}
    for amp in (False, True):
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss[amp] = float(objective(model, batch, StepInfo(0, 0, 100)).loss)
    return abs(loss[True] - loss[False])


def fresh(size: str, frozen_blocks: int = 0):
    """A ``size`` model from seed 0 in training mode with its first ``frozen_blocks`` backbone
    blocks frozen, and an AdamW over what it trains; every copy a rotation times starts from
    the same weights."""
    torch.manual_seed(0)
    model = build_detector(size).train()
    model.freeze_backbone_blocks(frozen_blocks)  # 0: none
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def compiled_copy(size: str, part: str):
    """A second model (the same seed) with ``part`` ("backbone" or "encoder": each encoder layer)
    wrapped in ``torch.compile``, and its optimizer."""
    model, optimizer = fresh(size)
    inner = model.model
    if part == "backbone":
        inner.backbone.conv_encoder = torch.compile(inner.backbone.conv_encoder)
    else:
        for i, layer in enumerate(inner.encoder.layers):
            inner.encoder.layers[i] = torch.compile(layer)
    return model, optimizer


def frozen_copy(size: str, blocks: int):
    """A second model (the same seed) with its first ``blocks`` backbone blocks frozen, its
    optimizer and a GRQO objective of its own."""
    model, optimizer = fresh(size, blocks)
    grqo = GRQOObjective(LossConfig(), _grqo_config())
    grqo.on_epoch_start(model, 0)
    return model, optimizer, grqo


def measure(
    size: str,
    steps: int,
    compile_parts: tuple[str, ...] = (),
    frozen_blocks: int = 0,
    settings: tuple[int, int] | None = None,
) -> dict:
    image_size, batch_size = settings or SETTINGS[size]
    model, optimizer = fresh(size)
    sft = SFTObjective(LossConfig())
    objectives = {"sft": sft, "grqo": GRQOObjective(LossConfig(), _grqo_config())}
    if "reference_features" in GRQOConfig.__dataclass_fields__:  # the documented deviation
        objectives["grqo_policy_features"] = GRQOObjective(
            LossConfig(), _grqo_config(reference_features="policy")
        )
    objectives["sft_bf16"] = sft
    objectives["grqo_bf16"] = GRQOObjective(LossConfig(), _grqo_config())
    objectives["sft_bf16_torch_sampling"] = sft
    grqo = objectives["grqo"]
    for objective in objectives.values():
        if hasattr(objective, "on_epoch_start"):
            objective.on_epoch_start(model, 0)
    # Each run: (model, optimizer, objective, bf16 autocast)
    runs = {name: (model, optimizer, obj, "_bf16" in name) for name, obj in objectives.items()}
    for part in compile_parts:
        runs[f"sft_compiled_{part}"] = (*compiled_copy(size, part), sft, False)
    frozen_blocks = frozen_blocks if model.config.backbone == "mobilenet_v2" else 0
    if frozen_blocks:
        frozen, frozen_optimizer, frozen_grqo = frozen_copy(size, frozen_blocks)
        runs["sft_frozen"] = (frozen, frozen_optimizer, sft, False)
        runs["grqo_frozen"] = (frozen, frozen_optimizer, frozen_grqo, False)
    reference = Stopwatch(grqo.reference_logits)
    grqo.reference_logits = reference
    rewards = Stopwatch(grqo_module.query_rewards)
    grqo_module.query_rewards = rewards
    times = {name: [] for name in runs}
    first = {}
    data = batches(image_size, batch_size, 4)
    for k in range(steps + 2):  # two warm-up rounds
        for name, (net, opt, objective, amp) in runs.items():
            if k == 2 and name == "grqo":
                reference.seconds = rewards.seconds = 0.0
            backend = deformable._backend
            if name.endswith("_torch_sampling"):
                deformable.set_backend("torch")
            try:
                seconds = step(net, objective, opt, data[k % len(data)], k, amp)
            finally:
                deformable.set_backend(backend)
            first.setdefault(name, seconds)
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
    compiled = (f"sft_compiled_{p}" for p in compile_parts)
    for name in ("sft_bf16", "grqo_bf16", "sft_bf16_torch_sampling", *compiled):
        out[f"{name}_step_s"] = median[name]
        out[f"{name}_over_fp32"] = median[name] / median[name.split("_")[0]]
    for name in ("sft", "grqo"):
        out[f"{name}_bf16_loss_abs_change"] = bf16_loss_change(model, objectives[name], data[0])
    for part in compile_parts:
        out[f"sft_compiled_{part}_first_step_s"] = first[f"sft_compiled_{part}"]
    if frozen_blocks:
        out["frozen_backbone_blocks"] = frozen_blocks
        out["sft_frozen_step_s"] = median["sft_frozen"]
        out["sft_frozen_over_sft"] = median["sft_frozen"] / median["sft"]
        out["grqo_frozen_step_s"] = median["grqo_frozen"]
        out["grqo_frozen_over_sft_frozen"] = median["grqo_frozen"] / median["sft_frozen"]
    return out


def reference_bf16(size: str, repeats: int = 3, settings: tuple[int, int] | None = None) -> dict:
    """GRQO's reference forward in float32 and under bf16 autocast, alternated on the same
    batches: median seconds per call, and the largest and mean absolute change of its
    objectness."""
    image_size, batch_size = settings or SETTINGS[size]
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
    parser.add_argument(
        "--compile", action="store_true", help="also time SFT with torch.compile'd parts"
    )
    parser.add_argument(
        "--frozen-blocks",
        type=int,
        default=4,
        help="also time a copy with this many MobileNetV2 blocks frozen (0: not)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="replaces the size's")
    parser.add_argument("--batch-size", type=int, default=None, help="replaces the size's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = ("backbone", "encoder") if args.compile else ()

    def settings(size: str) -> tuple[int, int]:
        image_size, batch_size = SETTINGS[size]
        return args.image_size or image_size, args.batch_size or batch_size

    results = {
        size: measure(size, args.steps, parts, args.frozen_blocks, settings(size))
        for size in args.sizes
    }
    for size, r in results.items():
        print(
            f"{size}: SFT {r['sft_step_s']:.3f} s, GRQO {r['grqo_step_s']:.3f} s, "
            f"ratio {r['grqo_over_sft']:.2f}; bf16 autocast: SFT {r['sft_bf16_step_s']:.3f} s, "
            f"GRQO {r['grqo_bf16_step_s']:.3f} s"
        )
        for part in parts:
            print(
                f"  SFT with torch.compile'd {part}: {r[f'sft_compiled_{part}_step_s']:.3f} s "
                f"(first step {r[f'sft_compiled_{part}_first_step_s']:.1f} s)"
            )
        if "sft_frozen_step_s" in r:
            print(
                f"  {r['frozen_backbone_blocks']} backbone blocks frozen: SFT "
                f"{r['sft_frozen_step_s']:.3f} s ({r['sft_frozen_over_sft']:.2f}x), GRQO "
                f"{r['grqo_frozen_step_s']:.3f} s, ratio {r['grqo_frozen_over_sft_frozen']:.2f}"
            )
        if not args.no_reference_bf16:
            r["reference_bf16"] = ref = reference_bf16(size, settings=settings(size))
            print(
                f"  reference forward: float32 {ref['fp32_s']:.3f} s, bf16 {ref['bf16_s']:.3f} s; "
                f"objectness moves by up to {ref['objectness_abs_change_max']:.3f}"
            )
    print(write_result("step_time", {"sizes": results}))


if __name__ == "__main__":
    main()
