"""Loading real Grounding-DINO weights (transformers format) into the visual-prompt detector.

Every module the two models share has the same name and shape (backbone, neck, feature
enhancer, decoder layers, box heads, query embeddings, BERT), so weights load by name. What is
new in DINO-R1 — the visual prompt encoder, the contrastive heads' biases, the denoising content
projection — keeps its initialisation, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

from workbench.model.config import DetectorConfig
from workbench.model.detector import VisualPromptDetector


@dataclass
class LoadReport:
    """``loaded``: our modules filled from the checkpoint; ``new``: modules that kept their
    initialisation; ``unused``: checkpoint tensors with no place in our model."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)} modules; new: {', '.join(self.new) or 'none'}; "
            f"{len(self.unused)} checkpoint tensors unused"
        )


def config_from_grounding_dino(hf: GroundingDinoConfig, **overrides) -> DetectorConfig:
    backbone = hf.backbone_config.to_dict()
    text = hf.text_config.to_dict() if hf.text_config is not None else None
    return DetectorConfig(
        size="grounding-dino",
        d_model=hf.d_model,
        num_queries=hf.num_queries,
        encoder_layers=hf.encoder_layers,
        decoder_layers=hf.decoder_layers,
        encoder_ffn_dim=hf.encoder_ffn_dim,
        decoder_ffn_dim=hf.decoder_ffn_dim,
        encoder_attention_heads=hf.encoder_attention_heads,
        decoder_attention_heads=hf.decoder_attention_heads,
        num_feature_levels=hf.num_feature_levels,
        encoder_n_points=hf.encoder_n_points,
        decoder_n_points=hf.decoder_n_points,
        fusion_droppath=hf.fusion_droppath,
        positional_embedding_temperature=hf.positional_embedding_temperature,
        decoder_bbox_embed_share=hf.decoder_bbox_embed_share,
        backbone="hf",
        backbone_config=backbone,
        text_encoder="bert" if text else None,
        text_config=text,
        **overrides,
    )


def from_grounding_dino(
    path_or_id: str, device: str | torch.device = "cpu", **overrides
) -> tuple[VisualPromptDetector, LoadReport]:
    """A visual-prompt detector holding a Grounding-DINO checkpoint's weights.

    ``path_or_id``: a local folder saved with ``save_pretrained`` or a hub id such as
    ``IDEA-Research/grounding-dino-tiny`` (downloaded on first use). ``overrides`` change
    DetectorConfig fields that do not affect loaded shapes (e.g. ``dn_number``).
    """
    # transformers reads the checkpoint (its files, shards and the renames between its saved and
    # in-memory parameter names); its in-memory names are the ones ours mirror.
    reference = GroundingDinoForObjectDetection.from_pretrained(path_or_id)
    overrides.setdefault("text_tokenizer", str(path_or_id))  # hub repos ship the BERT tokenizer
    model = VisualPromptDetector(config_from_grounding_dino(reference.config, **overrides))
    state = reference.state_dict()
    del reference
    ours = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, tensor in state.items():
        if key.startswith("model.decoder.bbox_embed."):
            continue  # transformers' tied copy of bbox_embed, which loads below
        if key not in ours:
            report.unused.append(key)
        elif ours[key].shape != tensor.shape:
            report.mismatched.append(
                f"{key}: checkpoint {tuple(tensor.shape)} vs {tuple(ours[key].shape)}"
            )
        else:
            usable[key] = tensor
    model.load_state_dict(usable, strict=False)
    _fill_report(model, set(usable), report)
    return model.to(device), report


def _fill_report(model: VisualPromptDetector, loaded: set[str], report: LoadReport) -> None:
    """Group parameter names by module; tied copies (shared box heads) count as loaded."""
    shared = {id(p): n for n, p in model.named_parameters(remove_duplicate=False) if n in loaded}
    modules: dict[str, list[bool]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        module = _module_name(name)
        modules.setdefault(module, []).append(name in loaded or id(param) in shared)
    for module, flags in modules.items():
        (report.loaded if all(flags) else report.new).append(module)


def _module_name(param: str) -> str:
    """A readable module name: ``model.prompt_encoder``, ``class_embed.3``, ``model.encoder``."""
    parts = param.split(".")
    depth = 2 if parts[0] == "model" or parts[0] in ("class_embed", "bbox_embed") else 1
    return ".".join(parts[:depth])
