"""Measurements that explain a short GRQO run: the learning rate a checkpoint ended at, how many
epochs and reference copies a run makes, the gradient shares a run logged (or that a model and
its reference have on fixed batches), and how far a model has moved from a reference in rewards
and KL on fixed batches.

Notebook 04 uses them to compare a GRQO arm with an SFT control on the same batches; each is
small and needs no Trainer.

    cfg = config_from_record(saved_full_config("models/sft"))
    final_lr(cfg.train)                      # 2e-05: lr 2e-4 dropped x0.1 at epoch 5 of 6
    batches = fixed_batches(train_set, batch_size=4, count=2, seed=0)
    probe(policy, reference, batches, LossConfig())   # {"kl_mean": ..., "reward_mean_0": ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from workbench.config import GRQOConfig, LossConfig, TrainConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.types import Batch

GRADIENT_METRICS = ("grad_norm_sft", "grad_norm_adv", "grad_norm_kl", "grad_norm_grqo")
SHARE_PREFIXES = ("grad_norm_", "grad_cos_", "grad_share_")  # every gradient-share metric logged


def final_lr(train: TrainConfig) -> float:
    """The main parameter groups' learning rate at the last step of a run that ran all its
    ``train.epochs``: ``train.lr`` times ``lr_drop_factor`` per epoch of ``lr_drop_epochs`` the
    run reached (the backbone's is ``backbone_lr_mult`` times this). Assumes the warm-up
    (``warmup_steps``) ended before the last epoch, as it does in every shipped config."""
    if train.max_steps is not None:
        raise ValueError(
            f"train.max_steps={train.max_steps}: the run may have stopped mid-schedule; "
            "read the lr of its last metrics.jsonl record instead"
        )
    drops = sum(e <= train.epochs - 1 for e in train.lr_drop_epochs)
    return train.lr * train.lr_drop_factor**drops


def run_schedule(num_images: int, batch_size: int, steps: int) -> dict[str, float]:
    """What ``steps`` optimizer steps of ``batch_size`` images over ``num_images`` amount to:
    ``steps_per_epoch`` (complete batches), ``epochs`` (a fraction for a partial epoch) and
    ``reference_copies``, the epoch starts the run reaches, at each of which an
    ``epoch_refresh`` GRQO reference is copied from the current model (the first copy is the
    starting model itself)."""
    per_epoch = num_images // batch_size
    if per_epoch < 1 or steps < 1:
        raise ValueError(
            f"need steps >= 1 and at least one batch of {batch_size} in {num_images} images"
        )
    return {
        "steps_per_epoch": per_epoch,
        "epochs": steps / per_epoch,
        "reference_copies": math.ceil(steps / per_epoch),
    }


def gradient_shares(records: Sequence[dict]) -> dict[str, float]:
    """Mean over a run's metrics records of each ``grad_norm_{sft,adv,kl,grqo}`` it logged
    (every ``grqo.grad_norm_every`` steps; ``None`` and absent values are skipped), with the
    ratios ``sft_over_grqo`` (how many times larger the SFT loss's gradient is than GRQO's) and
    ``kl_share`` (``grad_norm_kl / (grad_norm_adv + grad_norm_kl)``, the KL part's share of the
    two GRQO parts' norms). NaN where nothing was logged."""
    means = {}
    for key in GRADIENT_METRICS:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        means[key] = sum(values) / len(values) if values else math.nan
    parts = means["grad_norm_adv"] + means["grad_norm_kl"]
    means["sft_over_grqo"] = means["grad_norm_sft"] / means["grad_norm_grqo"]
    means["kl_share"] = means["grad_norm_kl"] / parts if parts > 0 else math.nan
    return means


def measure_gradient_shares(
    policy: nn.Module,
    objective: GRQOObjective,
    batches: Sequence[Batch],
    info: StepInfo,
    seed: int = 0,
) -> dict[str, float]:
    """The gradient shares ``objective`` logs (``grad_norm_*``, ``grad_cos_*``, ``grad_share_*``)
    measured now on each of ``batches`` and averaged: for a run that logged none, from its saved
    weights and its objective's restored reference. ``objective`` must be active at ``info``
    and measure at every step (``grqo.grad_norm_every=1``); ``policy`` runs as it is (train
    mode, as in training). torch's generator is reseeded with ``seed`` before each batch. Only
    gradients are computed: no parameter changes."""
    if not objective.measures_gradients(info) or not objective.active(info):
        raise ValueError(
            f"the objective does not measure gradient shares at step {info.step} (epoch "
            f"{info.epoch}): build it with grqo.grad_norm_every=1 and a step past its warm-up"
        )
    sums: dict[str, float] = {}
    for batch in batches:
        torch.manual_seed(seed)
        metrics = objective(policy, batch, info).metrics
        shares = {k: v for k, v in metrics.items() if k.startswith(SHARE_PREFIXES)}
        if not shares:
            raise ValueError("the batch gave the GRQO terms nothing to measure (no prompts?)")
        for key, value in shares.items():
            sums[key] = sums.get(key, 0.0) + value / len(batches)
    return sums


def fixed_batches(
    dataset, batch_size: int, count: int, seed: int, names: Sequence[str] | None = None
) -> list[Batch]:
    """``count`` batches of the dataset's first ``count * batch_size`` items, each with one
    prompt per class drawn by ``numpy.random.default_rng([seed, k])``. torch's global generator
    is seeded with ``seed`` first, so random transforms (flips) give the same images every
    call."""
    torch.manual_seed(seed)
    batches = []
    for k in range(count):
        batch = collate([dataset[i] for i in range(k * batch_size, (k + 1) * batch_size)])
        batch.prompts = sample_training_prompts(
            batch.targets, np.random.default_rng([seed, k]), names
        )
        batches.append(batch)
    return batches


def probe(
    policy: nn.Module,
    reference: nn.Module,
    batches: Sequence[Batch],
    loss_cfg: LossConfig,
    seed: int = 0,
) -> dict[str, float]:
    """How far ``policy`` is from ``reference`` on ``batches``: the mean k3 KL of the selection
    objectness (the reference sharing the policy's exemplars, so two equal models give 0) and
    each decoder layer's mean reward ``reward_mean_{l}`` (GRQO's ``-min_j C(i, j)``), averaged
    over the batches. Both models run as they are (train or eval mode); torch's generator is
    reseeded with ``seed`` before each batch (the denoising queries draw from it)."""
    objective = GRQOObjective(loss_cfg, GRQOConfig(reference_exemplars="shared", grad_norm_every=0))
    objective.reference = reference
    info = StepInfo(step=0, epoch=0, total_steps=1)
    sums: dict[str, float] = {}
    for batch in batches:
        torch.manual_seed(seed)
        with torch.no_grad():
            metrics = objective(policy, batch, info).metrics
        for key, value in metrics.items():
            if key == "kl_mean" or key.startswith("reward_mean_"):
                sums[key] = sums.get(key, 0.0) + value / len(batches)
    return sums
