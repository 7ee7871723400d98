"""Grounding DINO with visual prompts in place of text tokens (docs/method.md#the-paper).

backbone -> neck (1x1 conv + GroupNorm per level) = the "vanilla" multi-scale features
  -> visual prompt encoder: one embedding per exemplar box, averaged per prompt
  -> feature enhancer (Grounding DINO's encoder; prompts sit where text tokens would, each
     seeing only itself: identity self-attention mask, position id 0)
  -> visual-guided query selection: the Q tokens with the highest max-over-prompts logit
  -> decoder: query self-attention, query -> prompt cross-attention, deformable image
     cross-attention, iterative box refinement
  -> contrastive class head (query . prompt / sqrt(d) + bias; one per decoder layer plus one for
     the encoder) and box head.

Module names mirror transformers' ``GroundingDinoForObjectDetection`` (``model.backbone``,
``model.encoder``, ``model.decoder.layers``, ``bbox_embed`` ...), so a real Grounding-DINO
checkpoint loads into every module the two share (see build.py). The output contract is in
``workbench/model/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoConvModel,
    GroundingDinoEncoder,
    GroundingDinoMLPPredictionHead,
    build_position_encoding,
)

from workbench.model import fastpath
from workbench.model.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenStem,
    build_backbone,
    freeze_backbone_blocks,
)
from workbench.model.config import DetectorConfig
from workbench.model.decoder import PromptDecoder
from workbench.model.deformable import use_levelwise_sampling
from workbench.model.denoising import build_denoising_queries
from workbench.model.prompt_encoder import VisualPromptEncoder, class_embeddings
from workbench.model.text import build_text_modules
from workbench.types import PromptSet, Target


@dataclass(frozen=True)
class ImageFeatures:
    """Backbone + neck output for a batch of images, flattened over levels (T tokens).

    An immutable value: the Predictor returns it from ``encode`` and callers may keep it (in a
    notebook variable or ``gr.State``) to re-prompt the same image without the backbone.
    """

    tokens: Tensor  # [B, T, d] features before the enhancer
    valid: Tensor  # [B, T] bool, True on tokens of real pixels
    position: Tensor  # [B, T, d] sine position + level embedding
    spatial_shapes: Tensor  # [levels, 2] int64 (h, w)
    spatial_shapes_list: tuple[tuple[int, int], ...]
    level_start_index: Tensor  # [levels]
    valid_ratios: Tensor  # [B, levels, 2] unpadded fraction (w, h) of each map
    # The backbone's frozen blocks' output (``train.frozen_backbone_blocks``), for GRQO's
    # reference; None when no block is frozen, and in ``select`` and ``cat``.
    stem: FrozenStem | None = dataclasses.field(default=None, compare=False, repr=False)

    def detach(self) -> ImageFeatures:
        """The same features without autograd history (GRQO's reference may reuse them)."""
        return dataclasses.replace(
            self,
            tokens=self.tokens.detach(),
            position=self.position.detach(),
            valid_ratios=self.valid_ratios.detach(),
        )

    def select(self, index: Tensor) -> ImageFeatures:
        """The features of images ``index`` (e.g. the searched image of a batch)."""
        return ImageFeatures(
            self.tokens[index],
            self.valid[index],
            self.position[index],
            self.spatial_shapes,
            self.spatial_shapes_list,
            self.level_start_index,
            self.valid_ratios[index],
        )

    @staticmethod
    def cat(batches: Sequence[ImageFeatures]) -> ImageFeatures:
        """Batches of features of equal spatial shapes as one batch (the inverse of ``select``):
        several encoded images prompted in one decoder pass."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        return ImageFeatures(
            tokens=torch.cat([f.tokens for f in batches]),
            valid=torch.cat([f.valid for f in batches]),
            position=torch.cat([f.position for f in batches]),
            spatial_shapes=first.spatial_shapes,
            spatial_shapes_list=first.spatial_shapes_list,
            level_start_index=first.level_start_index,
            valid_ratios=torch.cat([f.valid_ratios for f in batches]),
        )


@dataclass(frozen=True)
class PromptEmbeddings:
    exemplars: Tensor  # [E, d], one per box
    classes: Tensor  # [U, d], averaged per prompt


class ContrastiveHead(nn.Module):
    """logit(query, prompt) = query . prompt / sqrt(d) + bias; the bias is learnable."""

    def __init__(self, d_model: int, prior: float):
        super().__init__()
        self.scale = 1.0 / math.sqrt(d_model)
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior) / prior)))

    def forward(self, queries: Tensor, prompts: Tensor) -> Tensor:
        """``[B, N, d]`` x ``[B, U, d]`` -> ``[B, N, U]``."""
        return queries @ prompts.transpose(-1, -2) * self.scale + self.bias


class PromptGroundingModel(nn.Module):
    """The body, named like transformers' ``GroundingDinoModel`` (weights load by name)."""

    def __init__(self, cfg: DetectorConfig, hf):
        super().__init__()
        d = cfg.d_model
        conv = build_backbone(hf, cfg.backbone, pretrained=cfg.backbone_pretrained)
        self.backbone = GroundingDinoConvModel(conv, build_position_encoding(hf))
        channels = list(conv.intermediate_channel_sizes)
        projections = [
            nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32 if d % 32 == 0 else 8, d))
            for c in channels
        ]
        for _ in range(cfg.num_feature_levels - len(channels)):  # extra levels: stride-2 convs
            c = channels[-1] if len(projections) == len(channels) else d
            projections.append(
                nn.Sequential(nn.Conv2d(c, d, 3, 2, 1), nn.GroupNorm(32 if d % 32 == 0 else 8, d))
            )
        self.input_proj_vision = nn.ModuleList(projections)
        self.level_embed = nn.Parameter(torch.zeros(cfg.num_feature_levels, d))
        self.prompt_encoder = VisualPromptEncoder(
            hf, cfg.prompt_heads, cfg.prompt_points, cfg.prompt_ffn_dim
        )
        self.encoder = GroundingDinoEncoder(hf)
        self.decoder = PromptDecoder(hf)
        self.query_position_embeddings = nn.Embedding(cfg.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.encoder_output_bbox_embed = GroundingDinoMLPPredictionHead(d, d, 4, 3)
        self.encoder_output_class_embed = ContrastiveHead(d, cfg.class_prior)
        self.dn_content_proj = nn.Linear(d, d)  # prompt embedding -> denoising query content
        if cfg.text_encoder is not None:  # frozen, for the text-visual alignment loss only
            self.text_backbone, self.text_projection = build_text_modules(
                cfg.text_encoder, cfg.text_config, d
            )
            # The alignment loss's learnable temperature, exp() of it starting at 1 / 0.07.
            self.align_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class VisualPromptDetector(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.config = cfg
        hf = cfg.to_hf()
        self.model = PromptGroundingModel(cfg, hf)
        heads = [GroundingDinoMLPPredictionHead(cfg.d_model, cfg.d_model, 4, 3)]
        for _ in range(cfg.decoder_layers - 1):
            shared = cfg.decoder_bbox_embed_share
            heads.append(
                heads[0]
                if shared
                else GroundingDinoMLPPredictionHead(cfg.d_model, cfg.d_model, 4, 3)
            )
        self.bbox_embed = nn.ModuleList(heads)
        self.class_embed = nn.ModuleList(
            ContrastiveHead(cfg.d_model, cfg.class_prior) for _ in range(cfg.decoder_layers)
        )
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        _init_weights(self, hf)
        use_levelwise_sampling(self)

    # --- stage 1: image features ---------------------------------------------------------

    def freeze_backbone_blocks(self, blocks: int) -> None:
        """``train.frozen_backbone_blocks``: the MobileNetV2 backbone's first ``blocks`` blocks
        stop training (a ConfigError for another backbone)."""
        freeze_backbone_blocks(self.model.backbone.conv_encoder, blocks)

    def extract_features(
        self, images: Tensor, pixel_mask: Tensor, stem: FrozenStem | None = None
    ) -> ImageFeatures:
        """``images [B, 3, H, W]`` RGB in [0, 1], ``pixel_mask [B, H, W]`` True on real pixels.

        ``stem``: these images' output of frozen backbone blocks that hold this model's weights
        (GRQO's reference continues from the policy's); otherwise a backbone with frozen blocks
        computes its own, kept in the result's ``stem``."""
        m = self.model
        pixels = (images - self.pixel_mean) / self.pixel_std
        if self.config.backbone == "mobilenet_v2" and fastpath.enabled():
            # Channels-last keeps every convolution on oneDNN's fast path; the neck's maps then
            # flatten to [B, h*w, d] without a copy.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        conv = m.backbone.conv_encoder
        if stem is None and getattr(conv, "frozen_blocks", 0):
            stem = conv.frozen_stem(pixels)
        if stem is None:
            outs, positions = m.backbone(pixels, pixel_mask.to(torch.bool))
        else:  # GroundingDinoConvModel's forward, from the stem on
            outs = conv(pixels, pixel_mask.to(torch.bool), stem)
            positions = [m.backbone.position_embedding(f, k).to(f.dtype) for f, k in outs]
        maps = [m.input_proj_vision[i](f) for i, (f, _) in enumerate(outs)]
        masks = [mask for _, mask in outs]
        for level in range(len(maps), len(m.input_proj_vision)):
            source = outs[-1][0] if level == len(outs) else maps[-1]
            maps.append(m.input_proj_vision[level](source))
            mask = nn.functional.interpolate(pixel_mask[None].float(), size=maps[-1].shape[-2:])[0]
            masks.append(mask.to(torch.bool))
            positions.append(m.backbone.position_embedding(maps[-1], masks[-1]).to(maps[-1].dtype))
        shapes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in maps)
        spatial = torch.as_tensor(shapes, dtype=torch.long, device=images.device)
        return ImageFeatures(
            tokens=torch.cat([f.flatten(2).transpose(1, 2) for f in maps], 1),
            valid=torch.cat([k.flatten(1) for k in masks], 1),
            position=torch.cat(
                [p.flatten(2).transpose(1, 2) + m.level_embed[i] for i, p in enumerate(positions)],
                1,
            ),
            spatial_shapes=spatial,
            spatial_shapes_list=shapes,
            level_start_index=torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]]),
            valid_ratios=torch.stack([_valid_ratio(k, maps[0].dtype) for k in masks], 1),
            stem=stem,
        )

    # --- stage 2: prompts ----------------------------------------------------------------

    def encode_prompts(self, features: ImageFeatures, prompts: PromptSet) -> PromptEmbeddings:
        """One embedding per exemplar box (on the image ``prompts.image_index`` points to), and
        their average per prompt."""
        exemplars = self.model.prompt_encoder(
            prompts.boxes_cxcywh,
            prompts.image_index,
            features.tokens,
            features.valid,
            features.valid_ratios,
            features.spatial_shapes,
            features.spatial_shapes_list,
            features.level_start_index,
        )
        classes = class_embeddings(exemplars, prompts.prompt_index, prompts.num_prompts)
        return PromptEmbeddings(exemplars=exemplars, classes=classes)

    # --- stage 3: enhancer, query selection, decoder -------------------------------------

    def _prompt_inputs(self, features: ImageFeatures, classes: Tensor) -> dict:
        """The enhancer's prompt-side arguments: prompts sit where text tokens would, each seeing
        only itself (identity self-attention mask, position id 0)."""
        b, u = features.tokens.shape[0], classes.shape[-2]
        prompts = classes.expand(b, -1, -1) if classes.dim() == 2 else classes
        not_self = ~torch.eye(u, dtype=torch.bool, device=prompts.device)
        return dict(
            text_features=prompts,
            text_attention_mask=torch.zeros(b, u, dtype=torch.bool, device=prompts.device),
            text_position_embedding=None,
            text_self_attention_masks=not_self.expand(b, -1, -1),
            text_position_ids=torch.zeros(b, u, dtype=torch.long, device=prompts.device),
        )

    def _vision_inputs(self, features: ImageFeatures) -> dict:
        return dict(
            vision_position_embedding=features.position,
            spatial_shapes=features.spatial_shapes,
            spatial_shapes_list=list(features.spatial_shapes_list),
            level_start_index=features.level_start_index,
        )

    def enhance(self, features: ImageFeatures, classes: Tensor) -> tuple[Tensor, Tensor]:
        """Feature enhancer: ``([B, T, d] image tokens, [B, U, d] prompt tokens)``."""
        out = self.model.encoder(
            vision_features=features.tokens,
            vision_attention_mask=~features.valid,
            valid_ratios=features.valid_ratios,
            return_dict=True,
            **self._vision_inputs(features),
            **self._prompt_inputs(features, classes),
        )
        return out.last_hidden_state_vision, out.last_hidden_state_text

    def _enhance_at(
        self, features: ImageFeatures, classes: Tensor, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`enhance`, with the last layer's image side (deformable self-attention and FFN,
        which mix nothing across tokens after sampling) run for the tokens ``index [B, Q]`` only:
        ``([B, Q, d] those image tokens, [B, U, d] prompt tokens)``."""
        enc, vision_args = self.model.encoder, self._vision_inputs(features)
        prompt_args = self._prompt_inputs(features, classes)
        points = enc.get_reference_points(
            features.spatial_shapes_list, features.valid_ratios, features.tokens.device
        )
        vision, text = features.tokens, prompt_args.pop("text_features")
        for layer in enc.layers[:-1]:
            (vision, text), _ = layer(
                vision_features=vision,
                key_padding_mask=~features.valid,
                reference_points=points,
                text_features=text,
                **vision_args,
                **prompt_args,
            )
        last = enc.layers[-1]
        text_position = last.get_text_position_embeddings(
            text, None, prompt_args["text_position_ids"]
        )
        (vision, _), (text, _) = last.fusion_layer(
            vision_features=vision,
            text_features=text,
            attention_mask_vision=~features.valid,
            attention_mask_text=prompt_args["text_attention_mask"],
        )
        text, _ = last.text_enhancer_layer(
            hidden_states=text,
            attention_masks=~prompt_args["text_self_attention_masks"],
            position_embeddings=text_position,
        )
        take = lambda x: x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        layer = last.deformable_layer
        picked = take(vision)
        attended, _ = layer.self_attn(
            hidden_states=picked,
            attention_mask=features.valid,
            encoder_hidden_states=vision,
            encoder_attention_mask=features.valid,
            position_embeddings=take(features.position),
            reference_points=take(points.flatten(2)).view(*index.shape, *points.shape[2:]),
            **{
                k: vision_args[k]
                for k in ("spatial_shapes", "spatial_shapes_list", "level_start_index")
            },
        )
        hidden = layer.self_attn_layer_norm(picked + attended)
        hidden = layer.final_layer_norm(hidden + layer.fc2(layer.activation_fn(layer.fc1(hidden))))
        return hidden, text

    def token_scores(self, features: ImageFeatures, memory: Tensor, prompts: Tensor):
        """Encoder-side class predictions for every token: proposal content ``[B, T, d]``, class
        logits ``[B, T, U]`` and a validity mask ``[B, T]``; boxes come from :meth:`token_boxes`
        for the tokens that are selected."""
        m = self.model
        proposals, valid = _grid_proposals(features)
        content = memory.masked_fill(~valid[..., None], 0.0)
        content = m.enc_output_norm(m.enc_output(content))
        return content, m.encoder_output_class_embed(content, prompts), proposals, valid

    def token_boxes(self, content: Tensor, proposals: Tensor) -> Tensor:
        """Box logits (inverse sigmoid, ``[..., 4]``) of tokens with ``content`` and grid
        ``proposals``; a per-token MLP, so it runs on the selected tokens only."""
        return self.model.encoder_output_bbox_embed(content) + proposals

    def selection_logits(
        self, features: ImageFeatures, classes: Tensor, index: Tensor | None = None
    ) -> Tensor:
        """``[B, T]`` max-over-prompts encoder logit of every token, or ``[B, Q]`` of the tokens
        ``index [B, Q]`` only (GRQO's reference model runs only this: backbone, prompt encoder,
        enhancer, encoder head). With an ``index`` and the fast path on, the enhancer's last
        image-side step runs for those tokens only (:meth:`_enhance_at`); the result equals the
        full computation gathered at ``index`` up to float rounding."""
        if index is None:
            memory, prompts = self.enhance(features, classes)
            return self.token_scores(features, memory, prompts)[1].max(-1).values
        valid = _grid_proposals(features)[1].gather(1, index)
        if fastpath.enabled() and self._deformable_layer_is_deterministic():
            memory, prompts = self._enhance_at(features, classes, index)
        else:
            memory, prompts = self.enhance(features, classes)
            memory = memory.gather(1, index[..., None].expand(-1, -1, memory.shape[-1]))
        m = self.model
        content = m.enc_output_norm(m.enc_output(memory.masked_fill(~valid[..., None], 0.0)))
        return m.encoder_output_class_embed(content, prompts).max(-1).values

    def _deformable_layer_is_deterministic(self) -> bool:
        """The shortened last layer skips the deformable layer's dropouts: exact only without
        them (every named size has none) or in eval mode."""
        layer = self.model.encoder.layers[-1].deformable_layer
        return not self.training or layer.dropout == layer.activation_dropout == 0

    def detect(
        self, features: ImageFeatures, classes: Tensor, targets: list[Target] | None = None
    ) -> dict:
        """Detections of the ``U`` prompt classes ``classes [U, d]`` (or ``[B, U, d]``) in every
        image of ``features``; ``targets`` (labels = prompt index) add denoising queries."""
        if classes.shape[-2] == 0:
            raise ValueError("no prompts: give at least one exemplar box to search for")
        memory, prompts = self.enhance(features, classes)
        content, logits, proposals, valid = self.token_scores(features, memory, prompts)
        q = min(self.config.num_queries, memory.shape[1])
        scores = logits.max(-1).values
        # Rank tokens by score, padding and off-image proposals last; keep the raw logit (with
        # gradient) of each selected token for GRQO's KL.
        ranking = scores.detach().masked_fill(~valid, float("-inf"))
        select_index = torch.topk(ranking, q, dim=1).indices
        select_logits = scores.gather(1, select_index)
        gather = lambda x: x.gather(1, select_index[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        reference = self.token_boxes(gather(content), gather(proposals)).sigmoid()
        out = {
            "enc_outputs": {"pred_logits": gather(logits), "pred_boxes": reference},
            "select_index": select_index,
            "select_logits": select_logits,
        }
        out.update(self._decode(features, memory, prompts, reference.detach(), targets))
        return out

    def _decode(self, features, memory, prompts, reference, targets) -> dict:
        b, q = reference.shape[:2]
        queries = self.model.query_position_embeddings.weight[:q].expand(b, -1, -1)
        dn = None
        if self.training and targets is not None and self.config.dn_number > 0:
            dn = build_denoising_queries(
                targets,
                prompts.shape[1],
                q,
                self.config.dn_number,
                self.config.dn_label_noise,
                self.config.dn_box_noise,
            )
        mask = None
        if dn is not None:
            dn_content = self.model.dn_content_proj(
                prompts.gather(1, dn.labels[..., None].expand(-1, -1, prompts.shape[-1]))
            )
            queries = torch.cat([dn_content, queries], 1)
            reference = torch.cat([dn.boxes_cxcywh, reference], 1)
            mask = dn.attn_mask
        hidden, boxes = self.model.decoder(
            queries, reference, memory, features, prompts, self.bbox_embed, self_attn_mask=mask
        )
        layers = [
            {"pred_logits": head(h, prompts), "pred_boxes": box}
            for head, h, box in zip(self.class_embed, hidden, boxes, strict=True)
        ]
        pad = 0 if dn is None else dn.pad_size
        out = {k: v[:, pad:] for k, v in layers[-1].items()}
        out["aux_outputs"] = [{k: v[:, pad:] for k, v in layer.items()} for layer in layers[:-1]]
        out["dn_outputs"] = None
        if dn is not None:
            out["dn_outputs"] = {
                "pred_logits": torch.stack([layer["pred_logits"][:, :pad] for layer in layers]),
                "pred_boxes": torch.stack([layer["pred_boxes"][:, :pad] for layer in layers]),
                "positive_index": dn.positive_index,
                "positive_target": dn.positive_target,
                "negative_index": dn.negative_index,
                "num_groups": dn.num_groups,
            }
        return out

    def forward(
        self,
        images: Tensor,
        pixel_mask: Tensor,
        prompts: PromptSet,
        targets: list[Target] | None = None,
        align_boxes: PromptSet | None = None,
    ) -> dict:
        """Training / evaluation forward: the prompts' exemplars lie on the batch's own images.

        ``align_boxes`` (every instance of the batch, for the alignment loss) are embedded too,
        into ``out["align_embeddings"]`` ``[E', d]``; going through ``forward`` keeps
        DistributedDataParallel's gradient hooks in charge of everything trained.
        """
        features = self.extract_features(images, pixel_mask)
        embedded = self.encode_prompts(features, prompts)
        out = self.detect(features, embedded.classes, targets)
        out["prompt_embeddings"] = {"exemplars": embedded.exemplars, "classes": embedded.classes}
        out["image_features"] = features
        if align_boxes is not None:
            out["align_embeddings"] = self.encode_prompts(features, align_boxes).exemplars
        return out


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def _valid_ratio(mask: Tensor, dtype) -> Tensor:
    """``[B, 2]`` (w, h) share of each feature map covered by real pixels."""
    h = mask[:, :, 0].sum(1).to(dtype) / mask.shape[1]
    w = mask[:, 0, :].sum(1).to(dtype) / mask.shape[2]
    return torch.stack([w, h], -1)


def _grid_proposals(features: ImageFeatures) -> tuple[Tensor, Tensor]:
    """One box per token: its cell centre, side 0.05 x 2^level (Deformable DETR's two-stage
    proposals), as inverse-sigmoid logits ``[B, T, 4]``, and which tokens are usable."""
    b = features.tokens.shape[0]
    dtype, device = features.tokens.dtype, features.tokens.device
    boxes, start = [], 0
    for level, (h, w) in enumerate(features.spatial_shapes_list):
        valid = features.valid[:, start : start + h * w].view(b, h, w)
        scale = torch.stack([valid[:, 0, :].sum(1), valid[:, :, 0].sum(1)], -1).to(dtype)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=dtype, device=device),
            torch.arange(w, dtype=dtype, device=device),
            indexing="ij",
        )
        centre = (torch.stack([xs, ys], -1)[None] + 0.5) / scale.clamp(min=1)[:, None, None]
        size = torch.full_like(centre, 0.05 * 2.0**level)
        boxes.append(torch.cat([centre, size], -1).view(b, -1, 4))
        start += h * w
    boxes = torch.cat(boxes, 1)
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & features.valid
    logits = torch.log(boxes.clamp(1e-4, 1 - 1e-4) / (1 - boxes.clamp(1e-4, 1 - 1e-4)))
    return logits, usable


def _init_weights(detector: VisualPromptDetector, hf) -> None:
    """Grounding DINO's initialisation for everything but the backbone (which comes with its own,
    or with ImageNet weights): deformable-attention sampling grids, zeroed last layers of box heads
    so refinement starts at the reference, normal-initialised linears."""
    initializer = detector.model.encoder  # a transformers PreTrainedModel holding the recipe
    backbone = set(detector.model.backbone.modules())
    if hasattr(detector.model, "text_backbone"):  # pretrained (MiniLM) or filled by a checkpoint
        backbone |= set(detector.model.text_backbone.modules())
    for module in detector.modules():
        if module not in backbone and not isinstance(module, ContrastiveHead):
            initializer._init_weights(module)
    nn.init.normal_(detector.model.level_embed)
