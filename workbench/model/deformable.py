"""Multi-scale deformable attention's sampling step, level by level.

transformers' pure-PyTorch ``MultiScaleDeformableAttention`` samples every level, stacks the
samples of all levels and points into one ``[B*H, D, Q, L*P]`` tensor, then weights and sums it.
The stack is a full copy and the weighted sum runs over the largest tensor of the layer. Summing
each level's weighted samples as soon as they are drawn gives the same result (up to float
rounding) without the copy: on two CPU cores it makes the encoder's attention about 1.9x faster
forward and 1.6x faster backward (benchmarks/results/deformable_attention.json).

:func:`use_levelwise_sampling` swaps it into a model's attention modules; it has no parameters,
so checkpoints are unaffected.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)


class LevelwiseDeformableSampling(nn.Module):
    """Drop-in for transformers' ``MultiScaleDeformableAttention`` (same call signature)."""

    def forward(
        self,
        value: Tensor,
        value_spatial_shapes: Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
        im2col_step: int,
    ) -> Tensor:
        """``value [B, T, H, D]``, ``sampling_locations [B, Q, H, L, P, 2]`` in [0, 1],
        ``attention_weights [B, Q, H, L, P]`` -> ``[B, Q, H * D]``."""
        b, _, heads, dim = value.shape
        q = sampling_locations.shape[1]
        levels = value.split([h * w for h, w in value_spatial_shapes_list], dim=1)
        grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
        out = None
        for level, (h, w) in enumerate(value_spatial_shapes_list):
            v = levels[level].flatten(2).transpose(1, 2).reshape(b * heads, dim, h, w)
            grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*H, Q, P, 2]
            samples = F.grid_sample(
                v, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(b * heads, 1, q, -1)
            term = (samples * weights).sum(-1)  # [B*H, D, Q]
            out = term if out is None else out + term
        return out.reshape(b, heads * dim, q).transpose(1, 2).contiguous()


def use_levelwise_sampling(model: nn.Module) -> int:
    """Replace every transformers deformable-sampling module in ``model``; returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is MultiScaleDeformableAttention:
                setattr(module, name, LevelwiseDeformableSampling())
                count += 1
    return count
