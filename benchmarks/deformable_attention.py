"""Deformable-attention sampling: transformers' stacked version against the level-by-level one.

    python benchmarks/deformable_attention.py

Times forward and backward of one encoder-sized call (batch 8, 8 heads x 16 dims, the four
levels of a 256 px image, 4 points: the small detector's encoder) and checks both give the same
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
    levelwise = timed(LevelwiseDeformableSampling(), args)
    diff = (stacked[2] - levelwise[2]).abs().max().item()
    result = {
        "shape": {"batch": 8, "heads": 8, "head_dim": 16, "levels": 4, "points": 4,
                  "queries": args[0].shape[1]},
        "transformers_stacked": {"forward_s": stacked[0], "backward_s": stacked[1]},
        "levelwise": {"forward_s": levelwise[0], "backward_s": levelwise[1]},
        "speedup_forward": stacked[0] / levelwise[0],
        "speedup_backward": stacked[1] / levelwise[1],
        "max_abs_difference": diff,
    }  # fmt: skip
    print(result)
    print(write_result("deformable_attention", result))


if __name__ == "__main__":
    main()
