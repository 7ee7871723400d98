"""What the training loop optimises and where it runs: AdamW parameter groups, the learning-rate
schedule, and the torchrun process group.

None of it needs a Trainer (only the model, :class:`TrainConfig` and torchrun's environment), so
a notebook or a benchmark can build the same optimizer, or plot the schedule, without one. The
schedule is a multiplier (:func:`lr_factor`) that ``torch.optim.lr_scheduler.LambdaLR`` applies
to every group's own lr, so the backbone keeps its ``backbone_lr_mult`` ratio through warm-up and
drops.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from workbench.config import ConfigError, TrainConfig


def _decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Weight decay on the weight matrices/kernels of layers (Linear, Conv, attention
    projections) only: not on biases, normalisation parameters, nn.Embedding tables, or free
    parameters such as query, level and position embeddings (DINO: none on absolute_pos_embed)."""
    norm_or_table = "Norm" in type(module).__name__ or isinstance(module, nn.Embedding)
    return param.ndim >= 2 and name.endswith("weight") and not norm_or_table


def default_param_groups(model: nn.Module, cfg: TrainConfig, is_backbone=None) -> list[dict]:
    """AdamW groups (backbone or not) x (decay or not); backbone lr = lr * backbone_lr_mult.

    ``is_backbone(name)`` defaults to ``"backbone" in name``; bind another with
    functools.partial and pass it as ``param_groups_fn``. Frozen parameters are left out.
    """
    is_backbone = is_backbone or (lambda name: "backbone" in name)
    groups: dict[tuple[bool, bool], list] = defaultdict(list)
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(prefix=prefix, recurse=False):
            if param.requires_grad:
                leaf = name.rsplit(".", 1)[-1]
                groups[is_backbone(name), _decays(module, leaf, param)].append(param)
    return [
        {
            "name": ("backbone" if backbone else "main") + ("" if decay else "_no_decay"),
            "params": params,
            "lr": cfg.lr * (cfg.backbone_lr_mult if backbone else 1.0),
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (backbone, decay), params in sorted(groups.items())
    ]


def lr_factor(step: int, cfg: TrainConfig, steps_in_epoch: int) -> float:
    """Multiplier of every group's lr at optimizer step ``step`` (from 0): linear warm-up from
    ``warmup_factor`` to 1 over ``warmup_steps``, times ``lr_drop_factor`` for each epoch of
    ``lr_drop_epochs`` reached (epoch e starts at step ``e * steps_in_epoch``)."""
    warm = 1.0
    if step < cfg.warmup_steps:
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_steps
    return warm * cfg.lr_drop_factor ** sum(step >= e * steps_in_epoch for e in cfg.lr_drop_epochs)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # the trainer started the process group, so it ends it


def check_device(device: str) -> torch.device:
    """``train.device`` as a torch device that exists on this machine, or a ConfigError naming
    the setting and what to use instead. ``"auto"``: cuda if CUDA is available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"train.device={device!r} is not a device ({err}); use auto, cpu, cuda or cuda:N"
        ) from err
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }.get(dev.type, False)
    if not available:
        raise ConfigError(
            f"train.device={device} is not available on this machine; use "
            "train.device=auto (CUDA when present, else CPU) or cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"train.device={device}: this machine has {count} CUDA devices; use cuda:0 or auto"
        )
    return dev


def setup_distributed(device: str) -> DistInfo:
    """Join torchrun's process group (env RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, nccl on
    CUDA). ``device="auto"``: cuda:LOCAL_RANK if CUDA is available, else cpu. A device this
    machine lacks is a ConfigError."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = check_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), dev, owns)
    return DistInfo(0, 1, dev, False)
