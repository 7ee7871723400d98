"""Deformable-attention sampling: transformers' stacked version, our level-by-level torch path
and the fused CPU kernel (workbench/model/deformable.py).

    python benchmarks/deformable_attention.py

Times forward and backward of one encoder-sized call (batch 8, 8 heads x 16 dims, the four
levels of a 256 px image, 4 points: the small detector's encoder) and checks all give the same
output. Writes benchmarks/results/deformable_attention.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

from workbench.model import deformable
from workbench.model.deformable import LevelwiseDeformableSampling


def inputs(batch=8, heads=8, dim=16, points=4, shapes=((32, 32), (16, 16), (8, 8), (4, 4))):
    g = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, dim, generator=g).requires_grad_()
    loc = torch.rand(batch, tokens, heads, len(shapes), points, 2, generator=g).requires_grad_()
    w = torch.rand(batch, tokens, heads, len(shapes) * points, generator=g).softmax(-1)
    w = w.view(batch, tokens, heads, len(shapes), points).requires_grad_()
    spatial = torch.tensor(shapes)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    return value, spatial, list(shapes), start, loc, w


def timed(module, args, repeats=7):
    forward, backward = [], []
    for _ in range(repeats):
        for t in args:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        start = time.perf_counter()
        out = module(*args, 64)
        middle = time.perf_counter()
        out.sum().backward()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    return min(forward), min(backward), out.detach()


def main() -> None:
    args = inputs()
    stacked = timed(MultiScaleDeformableAttention(), args)
    runs = {"transformers_stacked": stacked}
    for backend in ("torch", "cpp"):  # our module on each of its paths
        deformable.set_backend(backend)
        if backend == "cpp" and deformable.load_kernel() is None:
            print(f"no CPU kernel here: {deformable.kernel_status()}")
            continue
        runs["levelwise" if backend == "torch" else "kernel"] = timed(
            LevelwiseDeformableSampling(), args
        )
    deformable.set_backend("auto")
    result = {
        "shape": {
            "batch": 8,
            "heads": 8,
            "head_dim": 16,
            "levels": 4,
            "points": 4,
            "queries": args[0].shape[1],
        },
        "threads": torch.get_num_threads(),
        **{name: {"forward_s": r[0], "backward_s": r[1]} for name, r in runs.items()},
        "speedup_over_stacked": {
            name: {"forward": stacked[0] / r[0], "backward": stacked[1] / r[1]}
            for name, r in runs.items()
            if name != "transformers_stacked"
        },
        "max_abs_difference": {
            name: (stacked[2] - r[2]).abs().max().item() for name, r in runs.items()
        },
    }
    print(result)
    print(write_result("deformable_attention", result))


if __name__ == "__main__":
    main()
