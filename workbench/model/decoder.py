"""The decoder loop: Grounding DINO's decoder layers, with prompt tokens in place of text tokens.

Each layer: query self-attention, query -> prompt cross-attention, deformable cross-attention
into the enhanced image tokens, FFN (transformers' ``GroundingDinoDecoderLayer``). Boxes are
refined as in DINO's "look forward twice" (IDEA-Research/DINO, deformable_transformer.py and
dino.py), with ``h_i`` layer i's hidden state, ``norm`` the shared final LayerNorm, ``r_0`` the
initial reference (detached on entry) and ``e_i`` layer i's box head (one module for every layer
when ``decoder_bbox_embed_share``):

    n_i     = sigmoid(e_i(h_i) + logit(r_i))            layer i's refined box (its update)
    r_{i+1} = n_i.detach()                              the next layer's reference
    box_i   = sigmoid(e_i(norm(h_i)) + logit(n_{i-1}))  what layer i outputs; n_{-1} = r_0

``n_{i-1}`` enters ``box_i`` with its gradient, so layer i's box loss also trains layer i-1's box
head; the box chain ends there, because ``n_{i-1}`` is built on the detached ``r_{i-1}`` and each
layer's input reference is detached. (Hidden states still carry gradient through every earlier
layer, as in any decoder.) The forward values equal transformers' Grounding DINO, which uses
``n_{i-1}`` detached in ``box_i``, so there a box loss trains only its own layer's box head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoDecoderLayer,
    GroundingDinoMLPPredictionHead,
    encode_sinusoidal_position_embedding,
)


class PromptDecoder(nn.Module):
    """Named like transformers' ``GroundingDinoDecoder`` so its weights load by name."""

    def __init__(self, hf):
        super().__init__()
        self.d_model = hf.d_model
        self.layers = nn.ModuleList(GroundingDinoDecoderLayer(hf) for _ in range(hf.decoder_layers))
        self.layer_norm = nn.LayerNorm(hf.d_model, hf.layer_norm_eps)
        self.reference_points_head = GroundingDinoMLPPredictionHead(
            2 * hf.d_model, hf.d_model, hf.d_model, 2
        )

    def forward(
        self,
        queries: Tensor,
        reference: Tensor,
        memory: Tensor,
        features,
        prompts: Tensor,
        bbox_embed: nn.ModuleList,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run every layer.

        Args:
            queries: ``[B, N, d]`` content queries (denoising queries first, if any).
            reference: ``[B, N, 4]`` initial boxes, normalised cxcywh in (0, 1); detached here.
            memory: ``[B, T, d]`` enhanced image tokens; ``features`` their ImageFeatures.
            prompts: ``[B, U, d]`` enhanced prompt tokens.
            self_attn_mask: ``[N, N]`` bool, True where a query may not attend to another.
        Returns:
            per layer, the normalised hidden states ``[B, N, d]`` and boxes ``[B, N, 4]``.
        """
        additive = None
        if self_attn_mask is not None:
            additive = torch.zeros(self_attn_mask.shape, dtype=queries.dtype, device=queries.device)
            additive = additive.masked_fill(self_attn_mask, torch.finfo(queries.dtype).min)[
                None, None
            ]
        ratios = torch.cat([features.valid_ratios, features.valid_ratios], -1)[:, None]
        reference = reference.detach()
        hidden, box_base = queries, reference  # box_base: n_{i-1} above, with its gradient
        hiddens, boxes = [], []
        for i, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * ratios  # [B, N, levels, 4]
            sine = encode_sinusoidal_position_embedding(ref_input[:, :, 0, :], self.d_model // 2)
            hidden = layer(
                hidden_states=hidden,
                position_embeddings=self.reference_points_head(sine),
                reference_points=ref_input,
                spatial_shapes=features.spatial_shapes,
                spatial_shapes_list=list(features.spatial_shapes_list),
                level_start_index=features.level_start_index,
                vision_encoder_hidden_states=memory,
                vision_encoder_attention_mask=features.valid,
                text_encoder_hidden_states=prompts,
                text_encoder_attention_mask=None,
                self_attn_mask=additive,
            )[0]
            normed = self.layer_norm(hidden)
            hiddens.append(normed)
            boxes.append((bbox_embed[i](normed) + _logit(box_base)).sigmoid())
            # DINO refines the reference from the un-normed state and outputs from the normed one.
            box_base = (bbox_embed[i](hidden) + _logit(reference)).sigmoid()
            reference = box_base.detach()
        return hiddens, boxes


def _logit(p: Tensor) -> Tensor:
    return torch.special.logit(p, eps=1e-5)
