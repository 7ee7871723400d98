"""The visual prompt encoder of DINO-R1 (its ``VisualPromptEncoder``;
docs/method.md#visual-prompt-encoder).

One layer shaped like a Deformable-DETR decoder layer, in a different order:

1. content = one shared learnable vector per box; position = MLP(sine(box cxcywh)), 4 x d/2 -> d;
2. multi-scale deformable cross-attention from the box into the image features *before* the
   feature enhancer (the "vanilla" features), reference = the box itself, then LayerNorm;
3. self-attention masked to the diagonal, so each box attends only to itself (a per-box
   projection: prompts never mix here), then LayerNorm;
4. FFN, then LayerNorm.

The output is one embedding per box. Pooling boxes into a class embedding happens outside
(``class_embeddings``): by choosing one box per class in training, by averaging at evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoMLPPredictionHead,
    GroundingDinoMultiscaleDeformableAttention,
    encode_sinusoidal_position_embedding,
)


class VisualPromptEncoder(nn.Module):
    def __init__(
        self, hf_config, num_heads: int, num_points: int, ffn_dim: int, dropout: float = 0.0
    ):
        super().__init__()
        d = hf_config.d_model
        self.d_model = d
        self.content = nn.Embedding(1, d)
        self.position_mlp = GroundingDinoMLPPredictionHead(2 * d, d, d, num_layers=2)
        self.cross_attn = GroundingDinoMultiscaleDeformableAttention(
            hf_config, num_heads, num_points
        )
        self.cross_norm = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, num_heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, d)
        )
        self.ffn_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        boxes_cxcywh: Tensor,
        image_index: Tensor,
        features: Tensor,
        valid_mask: Tensor,
        valid_ratios: Tensor,
        spatial_shapes: Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: Tensor,
    ) -> Tensor:
        """Embed ``E`` exemplar boxes.

        Args:
            boxes_cxcywh: ``[E, 4]`` normalised to the unpadded size of their source image.
            image_index: ``[E]`` int64, the source image of each box in ``features``.
            features: ``[B, T, d]`` flattened multi-scale features before the enhancer.
            valid_mask: ``[B, T]`` bool, True on tokens of real pixels.
            valid_ratios: ``[B, levels, 2]`` unpadded fraction (w, h) of each feature map.
        Returns:
            ``[E, d]`` one embedding per box.
        """
        e = boxes_cxcywh.shape[0]
        if e == 0:
            return features.new_zeros(0, self.d_model)
        boxes = boxes_cxcywh.to(features.dtype)
        position = self.position_mlp(
            encode_sinusoidal_position_embedding(boxes, num_pos_feats=self.d_model // 2)
        )  # [E, d]
        # Group the boxes by source image, so each image's features are read once (a batch of
        # images, each with its boxes as queries) instead of being copied once per box.
        images, rows, slot = _group_by_image(image_index)
        grid = (len(images), int(slot.max()) + 1)  # [images, most boxes on one image]
        ratios = valid_ratios[images][rows]  # boxes live in the unpadded area of their image
        reference = boxes.new_zeros(*grid, ratios.shape[1], 4)
        reference[rows, slot] = boxes[:, None, :] * torch.cat([ratios, ratios], -1)
        position_grid = position.new_zeros(*grid, self.d_model)
        position_grid[rows, slot] = position
        query = self.content.weight.expand(*grid, -1)
        attended, _ = self.cross_attn(
            hidden_states=query,
            attention_mask=valid_mask[images],
            encoder_hidden_states=features[images],
            position_embeddings=position_grid,
            reference_points=reference,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
        )
        query, attended, position = (
            query[rows, slot][None],
            attended[rows, slot][None],
            position[None],
        )
        x = self.cross_norm(query + self.dropout(attended))  # [1, E, d]: one sequence of boxes
        qk = x + position
        only_self = ~torch.eye(e, dtype=torch.bool, device=x.device)  # True = may not attend
        attended, _ = self.self_attn(qk, qk, x, attn_mask=only_self, need_weights=False)
        x = self.self_norm(x + self.dropout(attended))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x[0]


def _group_by_image(image_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct source images, each box's row among them, and its slot among that image's
    boxes (boxes of one image become the queries of one batch entry)."""
    images, rows = torch.unique(image_index, return_inverse=True)
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=len(images))
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(len(rows), device=rows.device) - starts[rows[order]]
    return images, rows, slot


def class_embeddings(exemplars: Tensor, prompt_index: Tensor, num_prompts: int) -> Tensor:
    """Average the exemplar embeddings ``[E, d]`` of each prompt into ``[U, d]``.

    A prompt without exemplars is an error upstream (``VisualPrompt`` requires a box).
    """
    sums = exemplars.new_zeros(num_prompts, exemplars.shape[-1]).index_add(
        0, prompt_index, exemplars
    )
    counts = torch.bincount(prompt_index, minlength=num_prompts).clamp(min=1).to(exemplars.dtype)
    return sums / counts[:, None]
