"""How a training step's time, memory and FLOPs grow with queries, prompts and batch size.

    python benchmarks/scale.py [--size small] [--image-size 256] [--objective sft|grqo] \
        [--sweeps queries prompts batch] [--queries 100 300 500 700 900] \
        [--prompts 1 5 10 20 40 80] [--batch-sizes 1 2 4 8 16] [--base-queries Q] \
        [--base-prompts 10] [--base-batch 4] [--repeats 3] [--peak-size 2048] [--threads N]

Each sweep varies one quantity, the others at their base value (queries: the size's own). A step
is forward + backward + AdamW on one batch of synthetic shapes at ``--image-size``, with the SFT
objective (or GRQO, whose reference model's forward and rewards then count too). Prompts: one
exemplar each; first one per class present in the batch, as training samples them (a random subset
when there are more classes than prompts), then prompts for classes absent from the batch, whose
exemplars are jittered copies of the batch's boxes: negatives, as absent classes are in training.

Every setting runs in a fresh subprocess, which after one warm-up step measures:

- time: the median of ``--repeats`` steps;
- memory: the peak resident set size during those steps above the RSS just before them. Freed
  heap is first handed back to the OS (glibc ``malloc_trim``), then the kernel's peak-RSS counter
  is reset (``/proc/self/clear_refs``, Linux >= 4.0) and read back as ``VmHWM``. Model, AdamW
  state and the batch are in the baseline; the peak is activations, gradients and temporaries.
  (tracemalloc cannot see torch's CPU allocations.) Without the reset, only the process's
  lifetime peak is reported;
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one more step. It counts matrix
  products, convolutions and attention, forward and backward; element-wise work, normalisation,
  the deformable sampling (``grid_sample``) and the Hungarian matching are not counted;
- achieved FLOP/s = counted FLOPs / median step time, and its fraction of this machine's matmul
  peak: the best of several float32 ``--peak-size``-cubed matmuls (2 n^3 FLOPs each), measured once
  with the same threads.

Writes benchmarks/results/scale.json and one plot per sweep, scale_<sweep>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_dir, shapes_config, write_result

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesDataset
from workbench.model.build import build_detector, detector_config
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.objectives.sft import SFTObjective
from workbench.types import PromptSet, Target

SWEEPS = {"queries": "queries", "prompts": "prompts", "batch": "batch_size"}  # sweep -> field
LABELS = {"queries": "decoder queries", "prompts": "prompts (classes)", "batch": "batch size"}


def prompt_set(targets: list[Target], num_prompts: int, rng: np.random.Generator) -> PromptSet:
    """``num_prompts`` one-exemplar prompts over a batch (see the module docstring)."""
    sampled = sample_training_prompts(targets, rng)
    boxes, images, labels = sampled.boxes_cxcywh, sampled.image_index, sampled.labels
    if num_prompts <= sampled.num_prompts:
        keep = torch.from_numpy(np.sort(rng.choice(sampled.num_prompts, num_prompts, False)))
        boxes, images, labels = boxes[keep], images[keep], labels[keep]
    else:
        extra = num_prompts - sampled.num_prompts
        pool = torch.cat([t.boxes_cxcywh for t in targets])
        pool_images = torch.cat([torch.full((len(t),), b) for b, t in enumerate(targets)])
        pick = torch.from_numpy(rng.integers(len(pool), size=extra))
        noise = torch.from_numpy(rng.normal(0.0, 0.1, (extra, 4))).float()
        centres = pool[pick, :2] + noise[:, :2] * pool[pick, 2:]
        sides = pool[pick, 2:] * noise[:, 2:].exp()
        jittered = torch.cat([centres.clamp(0.02, 0.98), sides.clamp(0.01, 0.5)], 1)
        absent = int(max(int(t.labels.max()) for t in targets)) + 1 + torch.arange(extra)
        boxes, images = torch.cat([boxes, jittered]), torch.cat([images, pool_images[pick]])
        labels = torch.cat([labels, absent])
    return PromptSet(
        boxes_cxcywh=boxes,
        image_index=images,
        prompt_index=torch.arange(num_prompts),
        labels=labels,
    )


# --- memory: peak RSS of this process ----------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _return_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # without glibc freed heap stays counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- one setting (in a fresh process) ----------------------------------------------------------


def measure_setting(s: dict) -> dict:
    """Time, memory and FLOPs of a training step at setting ``s`` (a ``settings()`` entry)."""
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    torch.manual_seed(0)
    model = build_detector(s["size"], num_queries=s["queries"]).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if s["objective"] == "grqo":
        objective = GRQOObjective(LossConfig(), GRQOConfig())
        objective.on_epoch_start(model, 0)  # the reference copy
    else:
        objective = SFTObjective(LossConfig())
    data = ShapesDataset(s["batch_size"], seed=0, cfg=shapes_config(s["image_size"]))
    batch = collate([data[i] for i in range(s["batch_size"])])
    batch.prompts = prompt_set(batch.targets, s["prompts"], np.random.default_rng(0))

    def step(k: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = objective(model, batch, StepInfo(k, 0, 100))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start, out.extras["step"].outputs["select_index"].shape[1]

    _, effective_queries = step(0)  # warm-up; AdamW allocates its state
    _return_freed_memory()
    rss_before = _status_kb("VmRSS")
    reset = _reset_peak_rss()
    seconds = [step(k)[0] for k in range(1, 1 + s["repeats"])]
    peak = _status_kb("VmHWM")
    with FlopCounterMode(display=False) as counter:
        step(1 + s["repeats"])
    return {
        "step_s": statistics.median(seconds),
        "step_s_all": seconds,
        "effective_queries": effective_queries,
        "capped_by_image_tokens": effective_queries < s["queries"],
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024,
        "step_peak_mb": (peak - rss_before) / 1024 if reset else None,
        "flops": counter.get_total_flops(),
    }


def run_in_subprocess(setting: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(setting)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the sweeps --------------------------------------------------------------------------------


def matmul_peak_gflops(n: int, repeats: int = 5) -> float:
    """Best float32 ``n x n @ n x n`` throughput, GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up
    best = min(_timed_matmul(a, b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def linear_fit(x: list[float], y: list[float]) -> dict | None:
    """Least-squares ``y = intercept + slope * x``; None with fewer than two distinct x."""
    if len(set(x)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return {"intercept": float(intercept), "slope": float(slope)}


def plot_sweep(sweep: str, points: list[dict], peak_gflops: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [p["effective_queries"] if sweep == "queries" else p[SWEEPS[sweep]] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    panels = [
        ([p["step_s"] for p in points], "training step, s (median)"),
        ([p["step_peak_mb"] or float("nan") for p in points], "peak RSS above baseline, MB"),
        ([p["achieved_gflops"] for p in points], "counted GFLOP/s"),
    ]
    for ax, (y, label) in zip(axes, panels, strict=True):
        ax.plot(x, y, "o-")
        ax.set_xlabel(LABELS[sweep])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    share = axes[2].secondary_yaxis(
        "right", functions=(lambda g: 100 * g / peak_gflops, lambda f: f * peak_gflops / 100)
    )
    share.set_ylabel("% of matmul peak")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def settings(args) -> dict[str, list[dict]]:
    base = {
        "size": args.size,
        "image_size": args.image_size,
        "objective": args.objective,
        "repeats": args.repeats,
        "threads": args.threads,
        "queries": args.base_queries or detector_config(args.size).num_queries,
        "prompts": args.base_prompts,
        "batch_size": args.base_batch,
    }
    values = {"queries": args.queries, "prompts": args.prompts, "batch": args.batch_sizes}
    return {sweep: [{**base, SWEEPS[sweep]: v} for v in values[sweep]] for sweep in args.sweeps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--image-size", type=int, default=256, help="square images, pixels")
    parser.add_argument("--objective", choices=["sft", "grqo"], default="sft")
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--queries", type=int, nargs="+", default=[100, 300, 500, 700, 900])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 5, 10, 20, 40, 80])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--base-queries", type=int, default=None, help="default: the size's")
    parser.add_argument("--base-prompts", type=int, default=10)
    parser.add_argument("--base-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 peak matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one setting, in a subprocess
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_setting(json.loads(args.worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.peak_size)
    print(
        f"matmul peak ({args.peak_size}^3, float32, {torch.get_num_threads()} threads): "
        f"{peak:.1f} GFLOP/s"
    )
    sweeps = {}
    for sweep, group in settings(args).items():
        points = []
        for setting in group:
            point = {**setting, **run_in_subprocess(setting)}
            point["achieved_gflops"] = point["flops"] / point["step_s"] / 1e9
            point["fraction_of_peak"] = point["achieved_gflops"] / peak
            points.append(point)
            print(
                f"{sweep} {setting[SWEEPS[sweep]]}: {point['step_s']:.3f} s, "
                f"{point['step_peak_mb'] or float('nan'):.0f} MB, "
                f"{point['achieved_gflops']:.1f} GFLOP/s"
            )
        x = [p["effective_queries"] if sweep == "queries" else p[SWEEPS[sweep]] for p in points]
        sweeps[sweep] = {
            "points": points,
            "fit_step_s": linear_fit(x, [p["step_s"] for p in points]),
            "fit_step_peak_mb": linear_fit(x, [p["step_peak_mb"] for p in points])
            if all(p["step_peak_mb"] is not None for p in points)
            else None,
        }
        title = (
            f"{args.size}, {args.image_size} px, {args.objective.upper()}: step cost against "
            f"{LABELS[sweep]}"
        )
        plot_sweep(sweep, points, peak, title, results_dir() / f"scale_{sweep}.png")
    result = {
        "size": args.size,
        "image_size": args.image_size,
        "objective": args.objective,
        "repeats": args.repeats,
        "matmul_peak": {"n": args.peak_size, "gflops": peak},
        "memory_method": "peak RSS (VmHWM) during the timed steps minus RSS just before them; "
        "malloc_trim, then peak reset through /proc/self/clear_refs",
        "flop_method": "torch.utils.flop_counter.FlopCounterMode over one step (matmul, conv, "
        "attention; forward and backward)",
        "sweeps": sweeps,
    }
    print(write_result("scale", result))


if __name__ == "__main__":
    main()
