"""From a config to a trained, evaluated detector: the wiring behind ``python -m workbench train``.

config -> datasets (train with augmentation, val, cross-image exemplar pool) -> model (a named
size, a workbench checkpoint or Grounding-DINO weights) -> objective (``{"sft": ..., "grqo": ...}``)
-> Trainer, with an evaluation callback that runs the Predictor, the same inference path as the
app, on the validation set after each epoch (COCO AP and the query metrics of
:mod:`workbench.query_metrics`, logged as ``cross_image/recall_top_third`` ...). The held-out
test split is never evaluated during training: ``python -m workbench eval RUN --split test``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from workbench.config import Config, ConfigError, save_config, to_dict
from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.data.loader import steps_per_epoch
from workbench.data.sources import open_dataset
from workbench.data.transforms import train_transforms
from workbench.evaluation import EvalResult, evaluate
from workbench.model.build import FORMAT, SIZES, build_detector, from_pretrained
from workbench.model.detector import VisualPromptDetector
from workbench.objectives.sft import SFTObjective
from workbench.optim import check_device
from workbench.run_folder import check_resume_config, prepare
from workbench.safe_paths import writable_folder


def is_workbench_checkpoint(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and (
        (folder / "checkpoint.json").is_file()
        or (folder / "checkpoints").is_dir()
        or (folder / "latest").is_file()
    )


def build_model(cfg: Config) -> VisualPromptDetector:
    """The detector a config asks for; ``model.init_from`` decides where weights come from."""
    overrides: dict[str, Any] = {}
    if cfg.model.num_queries is not None:
        overrides["num_queries"] = cfg.model.num_queries
    if cfg.model.dn_number is not None:
        overrides["dn_number"] = cfg.model.dn_number
    if cfg.loss.align_weight > 0 and cfg.model.text_encoder is None and not cfg.model.init_from:
        raise ConfigError("loss.align_weight > 0 needs model.text_encoder=minilm (or init_from)")
    source = cfg.model.init_from
    if source and is_workbench_checkpoint(source):
        if overrides:
            warnings.warn(
                f"model.init_from={source}: its architecture wins over {overrides}", stacklevel=2
            )
        return from_pretrained(source).train()
    if source:
        from workbench.model.grounding_dino import from_grounding_dino

        model, report = from_grounding_dino(source, **overrides)
        print(f"Grounding-DINO weights from {source}: {report}")
        return model
    if cfg.model.text_encoder is not None:
        overrides["text_encoder"] = cfg.model.text_encoder
    return build_detector(cfg.model.size, **overrides)


def open_splits(cfg: Config) -> tuple[DetectionDataset, DetectionDataset, DetectionDataset]:
    """Training set (augmented), validation set and cross-image exemplar pool (untransformed)."""
    train = open_dataset(cfg.data, cfg.data.train_split, train_transforms(cfg.data))
    return (train, *open_evaluation_data(cfg))


def open_evaluation_data(
    cfg: Config, split: str | None = None
) -> tuple[DetectionDataset, DetectionDataset]:
    """The evaluated split (default ``data.val_split``; ``"test"`` for the held-out test split)
    and the cross-image exemplar pool (``eval.pool_split``), both of ``data.val_name`` when set
    (zero-shot transfer), untransformed."""
    data = replace(cfg.data, name=cfg.data.val_name) if cfg.data.val_name else cfg.data
    split = split or data.val_split
    if data.name == "coco_json" and split not in (data.train_split, data.val_split):
        raise DatasetError(
            f"data.name=coco_json reads only data.train_json and data.val_json, so it has no "
            f"split {split!r}; evaluate another json with data.val_json=PATH"
        )
    return open_dataset(data, split), open_dataset(data, cfg.eval.pool_split)


def run_evaluation(
    model_or_predictor, cfg: Config, val: DetectionDataset, pool: DetectionDataset
) -> dict[str, EvalResult]:
    """COCO AP and query metrics of every configured protocol, through the Predictor (a bare
    model is wrapped at the data config's resolution)."""
    results = {}
    for protocol in cfg.eval.protocols:
        results[protocol] = evaluate(
            model_or_predictor,
            val,
            protocol=protocol,
            exemplars_per_class=cfg.eval.exemplars_per_class,
            prompt_pool=pool if protocol == "cross_image" else None,
            seed=cfg.eval.seed,
            max_images=cfg.eval.max_images,
            min_size=cfg.data.min_size,
            max_size=cfg.data.max_size,
            exemplar_draws=cfg.eval.exemplar_draws,
            loss=cfg.loss,
        )
    return results


def flat_scores(results: dict[str, EvalResult]) -> dict[str, float]:
    """``{"cross_image/AP": ..., "interactive/AP50": ...}`` for logs."""
    return {f"{p}/{k}": v for p, r in results.items() for k, v in r.scalars().items()}


def build_objective(cfg: Config, model: VisualPromptDetector, train: DetectionDataset):
    """The configured objective; the trainer never knows which one it runs."""
    names = None
    if cfg.loss.align_weight > 0:
        from workbench.model.text import NameEncoder

        encoder = NameEncoder.for_detector(model)
        names = encoder([c.name for c in sorted(train.categories, key=lambda c: c.label)])
    objectives: dict[str, Callable[[], Any]] = {
        "sft": lambda: SFTObjective(cfg.loss, name_embeddings=names),
        "grqo": lambda: _grqo(cfg, names),
    }
    return objectives[cfg.train.objective]()


def _grqo(cfg: Config, names):
    from workbench.objectives.grqo import GRQOObjective

    return GRQOObjective(cfg.loss, cfg.grqo, name_embeddings=names)


def check_settings(cfg: Config) -> None:
    """What the config's own checks cannot see: the size names of the model module and the
    devices of this machine. Raises a ConfigError naming the setting."""
    if not cfg.model.init_from and cfg.model.size not in SIZES:
        raise ConfigError(
            f"model.size={cfg.model.size!r} is not a known size; choose one of {list(SIZES)}"
        )
    check_device(cfg.train.device)


def train(
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate after every ``train.eval_every_epochs`` epochs, write ``summary.json``.

    A ``train.out_dir`` that already holds a run is refused unless ``resume`` (continue from its
    latest checkpoint; a folder without one starts the run; settings that differ from the
    checkpoint's are refused unless ``allow_changes``, which applies them) or ``overwrite``
    (move the old run to ``OUT_DIR.old-N``, deleting nothing). See :mod:`workbench.run_folder`.
    """
    from workbench.trainer import Trainer

    check_settings(cfg)
    run_dir = Path(cfg.train.out_dir)
    prepare(run_dir, resume=resume, overwrite=overwrite, move=False)  # refusals come first
    writable_folder(run_dir, "train.out_dir")
    if resume:
        check_resume_config(run_dir, to_dict(cfg), allow=allow_changes)
    torch.manual_seed(cfg.train.seed)  # the initial weights
    train_set, val, pool = open_splits(cfg)
    steps_per_epoch(len(train_set), cfg.train.batch_size, int(os.environ.get("WORLD_SIZE", "1")))
    model = build_model(cfg)
    objective = build_objective(cfg, model, train_set)
    # Only now, with data and model ready, is an old run moved aside (never for nothing).
    moved = prepare(run_dir, resume=resume, overwrite=overwrite)
    if moved is not None:
        writable_folder(run_dir, "train.out_dir")
        print(f"moved the run that was in {run_dir} to {moved}")

    def eval_fn(trained, epoch: int) -> dict[str, float]:
        return flat_scores(run_evaluation(trained, cfg, val, pool))

    trainer = Trainer(
        model,
        objective,
        train_set,
        cfg.train,
        run_dir=run_dir,
        model_config={"format": FORMAT, **model.config.to_dict()},
        eval_fn=eval_fn,
        full_config=to_dict(cfg),
        resume=resume,
        allow_changes=allow_changes,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        progress=progress,
    )
    save_config(cfg, run_dir / "config.yaml")
    summary = trainer.fit()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
