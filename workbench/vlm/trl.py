"""Vision-R1's rewards as TRL reward functions, for a vision-language model under ``GRPOTrainer``.

TRL's ``GRPOTrainer`` calls each reward function as ``f(prompts=..., completions=...,
completion_ids=..., trainer_state=..., **columns)``: every other dataset column comes as a list
aligned with ``completions``, and a completion is a string or a list of chat messages
(``[{"role": "assistant", "content": ...}]``). :func:`vision_r1_reward_funcs` builds functions
with that signature; the columns they read:

- ``solution``: ground truth, ``[[label, [x1, y1, x2, y2]], ...]`` (a JSON string or a list;
  ``{"bbox_2d": ..., "label": ...}`` items also work), absolute xyxy pixels of the original image;
- ``width`` and ``height``, or ``image_size`` ``(height, width)``: the original image;
- ``input_widths`` and ``input_heights``, or ``input_size`` ``(height, width)``: the frame the
  model writes coordinates in (Qwen2.5-VL: its resized input). Predictions are rescaled from it
  to the original image. Without them, ``pred_frame_hw`` of the factory is used (Qwen3-VL:
  ``(1000, 1000)``); ``None`` means the predictions are already in original pixels;
- ``target_id_maps`` (optional): label name -> class id, so synonyms share an id; unknown
  predicted labels get id 0 (background), as in the released code;
- ``num_instances`` (optional, for the format reward's negative-image rule);
- ``trainer_state`` (``.global_step``, ``.max_steps``) or ``step``: the training step for STEP.

The scoring itself (parsing, format, matching, criteria) is :mod:`workbench.vlm.rewards`; this
module only reads TRL's batch columns and fans the scores out per reward. Model text never
raises: anything unparsable scores 0. Wrong dataset columns raise ValueError.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.vlm.rewards import (
    CriteriaScores,
    VisionR1Rules,
    completion_text,
    dual_format_reward,
    score_completion,
)


def parse_solution(solution: Any) -> tuple[list[str], Tensor]:
    """One sample's ground truth -> (lower-cased labels, ``[N, 4]`` float64 xyxy pixels).

    Accepts ``[[label, [x1, y1, x2, y2]], ...]`` (Vision-R1's ``solution`` column) or
    ``[{"bbox_2d": [...], "label": ...}, ...]``, as a list or a JSON string.
    """
    try:
        data = json.loads(solution) if isinstance(solution, str) else solution
        pairs = [
            (item["label"], item["bbox_2d"]) if isinstance(item, Mapping) else tuple(item)
            for item in data
        ]
        labels = [str(label).strip().lower() for label, _ in pairs]
        boxes = torch.tensor([[float(c) for c in box] for _, box in pairs], dtype=torch.float64)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"solution {str(solution)[:200]!r} is not a list of [label, [x1, y1, x2, y2]] "
            f"or of {{'bbox_2d': [...], 'label': ...}}: {err}"
        ) from err
    boxes = boxes.reshape(-1, 4)
    if not (torch.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()):
        raise ValueError(f"solution {str(solution)[:200]!r} has a non-finite or inverted box")
    return labels, boxes


def _size(kwargs: Mapping[str, Any], i: int, w_key: str, h_key: str, hw_key: str) -> Any:
    if w_key in kwargs and h_key in kwargs:
        return float(kwargs[h_key][i]), float(kwargs[w_key][i])
    if kwargs.get(hw_key) is not None:
        h, w = kwargs[hw_key][i]
        return float(h), float(w)
    return None


def _frames(
    kwargs: Mapping[str, Any], i: int, default_frame_hw: tuple[float, float] | None
) -> tuple[Any, Any]:
    """Sample i's original image and model frame ``(height, width)``, either may be None."""
    image_hw = _size(kwargs, i, "width", "height", "image_size")
    frame_hw = _size(kwargs, i, "input_widths", "input_heights", "input_size") or default_frame_hw
    if frame_hw is not None and image_hw is None:
        raise ValueError(
            "predictions are in a model frame of size (height, width) = "
            f"{frame_hw}, but the batch has no image size to rescale them to; add the dataset "
            "columns 'width' and 'height' (or 'image_size'), or set pred_frame_hw=None"
        )
    return image_hw, frame_hw


def _num_instances(kwargs: Mapping[str, Any], i: int) -> int | None:
    return int(kwargs["num_instances"][i]) if "num_instances" in kwargs else None


def _step(kwargs: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The training step and total steps: Vision-R1's ``step`` or TRL's ``trainer_state``."""
    state = kwargs.get("trainer_state")
    total = getattr(state, "max_steps", None) or None
    step = kwargs.get("step")
    return (step if step is not None else getattr(state, "global_step", None)), total


def _sample_scores(
    completions: Sequence[Any],
    kwargs: Mapping[str, Any],
    rules: VisionR1Rules,
    pred_frame_hw: tuple[float, float] | None,
) -> list[CriteriaScores]:
    if "solution" not in kwargs or len(kwargs["solution"]) != len(completions):
        raise ValueError(
            "Vision-R1 rewards need a dataset column 'solution' with one ground truth per "
            f"completion ({len(completions)}); got columns {sorted(kwargs)}"
        )
    thresholds = rules.thresholds(*_step(kwargs))
    maps = kwargs.get("target_id_maps")
    scores = []
    for i, completion in enumerate(completions):
        labels, boxes = parse_solution(kwargs["solution"][i])
        id_map = None if maps is None else maps[i]
        image_hw, frame_hw = _frames(kwargs, i, pred_frame_hw)
        scores.append(
            score_completion(
                completion_text(completion),
                labels,
                boxes,
                rules=rules,
                thresholds=thresholds,
                id_map=json.loads(id_map) if isinstance(id_map, str) else id_map,
                image_hw=image_hw,
                pred_frame_hw=frame_hw,
                num_instances=_num_instances(kwargs, i),
            )
        )
    return scores


RewardFunc = Callable[..., list[float]]


def vision_r1_reward_funcs(
    rules: VisionR1Rules | None = None,
    *,
    pred_frame_hw: tuple[float, float] | None = None,
    combine: Literal["separate", "sum", "mean"] = "separate",
    **rule_overrides: Any,
) -> list[RewardFunc]:
    """Vision-R1's rewards as TRL reward functions ``f(completions, **columns) -> list[float]``.

    Args:
        rules: paper-vs-code choices (default: the released code); ``rule_overrides`` replace
            single fields, e.g. ``vision_r1_reward_funcs(overlap="iou")``.
        pred_frame_hw: the model's coordinate frame when the batch has no input-size columns
            (``(1000, 1000)`` for Qwen3-VL); ``None``: predictions are in original pixels.
        combine: ``"separate"`` returns ``precision_reward``, ``dual_format_reward``,
            ``recall_reward`` (the released script's order and names, so TRL logs
            ``rewards/recall_reward/mean``...) for TRL to sum, as the paper and TRL code do;
            ``"sum"`` / ``"mean"`` (EasyR1) return one ``vision_r1_reward``.

    Columns read and the STEP step: see the module docstring.
    """
    try:
        rules = dataclasses.replace(rules or VisionR1Rules(), **rule_overrides)
    except TypeError as err:
        fields = [f.name for f in dataclasses.fields(VisionR1Rules)]
        raise ValueError(f"{err}; VisionR1Rules fields are {fields}") from None

    def precision_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [s.precision for s in _sample_scores(completions, kwargs, rules, pred_frame_hw)]

    def recall_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [s.recall for s in _sample_scores(completions, kwargs, rules, pred_frame_hw)]

    def dual_format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [
            _format_only(completion, i, kwargs, rules, pred_frame_hw)
            for i, completion in enumerate(completions)
        ]

    def vision_r1_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        scores = _sample_scores(completions, kwargs, rules, pred_frame_hw)
        return [s.total / (3 if combine == "mean" else 1) for s in scores]

    if combine not in ("separate", "sum", "mean"):
        raise ValueError(f"combine must be 'separate', 'sum' or 'mean', got {combine!r}")
    if combine == "separate":
        return [precision_reward, dual_format_reward, recall_reward]
    return [vision_r1_reward]


def _format_only(
    completion: Any,
    i: int,
    kwargs: Mapping[str, Any],
    rules: VisionR1Rules,
    default_frame_hw: tuple[float, float] | None,
) -> float:
    """The dual-format reward of completion i; needs neither ``solution`` nor image sizes.

    The paper's bounds check uses the model frame, else the image (predictions in pixels)."""
    if "solution" in kwargs and "num_instances" not in kwargs:
        num_instances = len(parse_solution(kwargs["solution"][i])[0])
    else:
        num_instances = _num_instances(kwargs, i)
    frame_hw = _size(kwargs, i, "input_widths", "input_heights", "input_size")
    return dual_format_reward(
        completion_text(completion),
        num_instances,
        check=rules.format_check,
        frame_hw=frame_hw or default_frame_hw or _size(kwargs, i, "width", "height", "image_size"),
    )
