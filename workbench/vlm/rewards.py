"""Vision-R1's criteria rewards for a vision-language model that writes boxes as JSON text.

Vision-R1 (arXiv 2503.18013; the released code is jefferyZhan/Griffon, ``Vision-R1/``) scores a
completion such as ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, ...]`` with three rewards
summed without weights: dual format (1 or 0), recall and precision over a box-prioritised
Hungarian matching, sharpened by STEP's staged thresholds (:mod:`workbench.rewards`). The spec,
with every paper-vs-code difference, is vision-r1-grpo.md §1–2.

Where the paper and the released code differ, :class:`VisionR1Rules` selects either. The
defaults reproduce the released TRL code as its published script runs it: GIoU, the L1 + label -
GIoU matcher, the lenient format check, strict upper bounds, matched-count precision, STEP off.
That is the one configuration that can be checked line by line (the spec's worked examples follow
it), while the paper leaves details open (its "IoU", its f_cont check). :meth:`VisionR1Rules.paper`
gives the paper's choices.

Model text never raises: anything unparsable scores 0. The TRL-facing reward functions
(``GRPOTrainer``'s calling convention and the dataset columns they read) are
:mod:`workbench.vlm.trl`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from workbench import boxes as box_ops
from workbench.rewards import (
    NO_STEP,
    OVERLAPS,
    Boundaries,
    StepSchedule,
    Thresholds,
    differentiate,
)

# The released fallback pattern: exactly Qwen's spacing, integer coordinates 0-1000.
_OBJECT_PATTERN = re.compile(
    r'\{"bbox_2d": \[(\d{1,3}|1000), (\d{1,3}|1000), (\d{1,3}|1000), (\d{1,3}|1000)\], '
    r'"label": "([^"]+)"\}'
)
_FAILED = object()
# Coordinates beyond the int32 range are garbage (no image is that large); rejecting them keeps
# every area, L1 and GIoU finite in float64, so matching never sees inf or NaN.
_MAX_COORD = 2**31


class ParsedBox(NamedTuple):
    """One predicted object: ``box_xyxy`` in the model's coordinate frame, lower-cased label
    (``None`` when it was not a string)."""

    box_xyxy: tuple[float, float, float, float]
    label: str | None


# --- parsing (vision-r1-grpo.md §1.3) --------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the last assistant message of a chat list
    (content a string or a list of ``{"type": "text", "text": ...}`` parts); else ``""``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, Sequence) or not completion:
        return ""
    messages = [m for m in completion if isinstance(m, Mapping)]
    answers = [m for m in messages if m.get("role", "assistant") == "assistant"]
    if not answers:
        return ""
    content = answers[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        return _FAILED


def _json_payload(text: str) -> Any:
    """The released ``parse_json``: drop a first line starting with ```json, cut at ```."""
    lines = text.strip().splitlines()
    if not lines:
        return _FAILED
    if lines[0].startswith("```json"):
        text = "\n".join(lines[1:])
    return _loads(text.split("```")[0])


def _int_box(value: Any) -> tuple[float, float, float, float] | None:
    """A ``bbox_2d`` as the released code reads it: 4 values cast to int, ``x1 < x2, y1 < y2``."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(int(c)) for c in value)
    except (TypeError, ValueError, OverflowError):
        return None
    if max(abs(x1), abs(y1), abs(x2), abs(y2)) > _MAX_COORD:
        return None
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def _label(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None


def parse_completion(text: str) -> list[ParsedBox]:
    """The objects of one completion (§1.3); never raises, unparsable text gives ``[]``.

    JSON first (optionally in a ```json fence; text after the closing fence is ignored): the
    list items with a 4-value ``bbox_2d``. Only if that yields nothing, a regex for objects
    written exactly as ``{"bbox_2d": [a, b, c, d], "label": "..."}``. Coordinates are cast to
    int, as the released code does (Qwen writes integers), and degenerate boxes are dropped.
    """
    text = text.strip()
    data = _json_payload(text)
    boxes = []
    if isinstance(data, list):
        for item in data:
            box = _int_box(item.get("bbox_2d")) if isinstance(item, dict) else None
            if box is not None:
                boxes.append(ParsedBox(box, _label(item.get("label"))))
    if boxes:
        return boxes
    found = (m.groups() for m in _OBJECT_PATTERN.finditer(text))
    boxes = [ParsedBox(tuple(float(c) for c in g[:4]), _label(g[4])) for g in found]
    return [b for b in boxes if b.box_xyxy[0] < b.box_xyxy[2] and b.box_xyxy[1] < b.box_xyxy[3]]


# --- format (§1.4) ---------------------------------------------------------------------------


def _paper_format_ok(data: Any, frame_hw: tuple[float, float] | None) -> bool:
    """The paper's template check (a list of {bbox_2d, label}) and content check (numbers, an
    ordered box inside the model's frame when its size is known)."""
    if not isinstance(data, list):
        return False
    for item in data:
        if not (isinstance(item, dict) and isinstance(item.get("label"), str)):
            return False
        box = item.get("bbox_2d")
        if not (isinstance(box, list) and len(box) == 4):
            return False
        if not all(isinstance(c, int | float) and not isinstance(c, bool) for c in box):
            return False
        x1, y1, x2, y2 = box
        h, w = frame_hw if frame_hw is not None else (float("inf"), float("inf"))
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):  # also false for NaN
            return False
    return True


def format_reward(
    text: str,
    *,
    check: Literal["code", "paper"] = "code",
    frame_hw: tuple[float, float] | None = None,
) -> float:
    """1.0 if the completion is well formed, else 0.0; never raises.

    ``check="code"`` (released): the text without ```json fences parses as JSON, and no list
    item holding both ``bbox_2d`` and ``label`` has a ``bbox_2d`` other than a 4-list (a parsed
    non-list passes). ``check="paper"`` (Eq. 4): also every item is ``{bbox_2d: 4 numbers,
    label: str}`` with ``0 <= x1 < x2 <= W``, ``0 <= y1 < y2 <= H`` of ``frame_hw`` (H, W).
    """
    data = _loads(re.sub(r"```json\n|\n```", "", text).strip())
    if data is _FAILED:
        return 0.0
    if check == "paper":
        return float(_paper_format_ok(data, frame_hw))
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and "bbox_2d" in item and "label" in item:
            box = item["bbox_2d"]
            if not (isinstance(box, list) and len(box) == 4):
                return 0.0
    return 1.0


def dual_format_reward(
    text: str,
    num_instances: int | None = None,
    *,
    check: Literal["code", "paper"] = "code",
    frame_hw: tuple[float, float] | None = None,
) -> float:
    """:func:`format_reward`, inverted on an image without objects under ``check="code"``.

    The released code gives ``1 - format`` when ``num_instances == 0``, so a well-formed list
    on a negative image scores 0; the paper describes no such rule.
    """
    reward = format_reward(text, check=check, frame_hw=frame_hw)
    return 1.0 - reward if check == "code" and num_instances == 0 else reward


# --- matching (§1.5) and criteria (§1.6, §1.7) -----------------------------------------------


def match_boxes(
    pred_boxes_xyxy: Tensor,
    pred_class_ids: Tensor,
    gt_boxes_xyxy: Tensor,
    gt_class_ids: Tensor,
    *,
    matcher: Literal["l1_class_giou", "box_only"] = "l1_class_giou",
) -> tuple[Tensor, Tensor]:
    """Box-prioritised Hungarian matching of ``[P, 4]`` predictions to ``[N, 4]`` GT boxes.

    Absolute xyxy pixels of the original image; class ids int64 ``[P]``, ``[N]``. Cost
    ``L1_px - GIoU`` with unit weights, minus 1 where the class ids agree under
    ``"l1_class_giou"`` (released code; the pixel L1 dominates, so labels only break near
    ties); ``"box_only"`` drops the label term (the paper's Table 3). Returns ``min(P, N)``
    pairs ``(pred_index, gt_index)``, int64, sorted by prediction.
    """
    if len(pred_boxes_xyxy) == 0 or len(gt_boxes_xyxy) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    cost = torch.cdist(pred_boxes_xyxy, gt_boxes_xyxy, p=1) - box_ops.generalized_box_iou(
        pred_boxes_xyxy, gt_boxes_xyxy
    )
    if matcher == "l1_class_giou":
        cost = cost - (pred_class_ids[:, None] == gt_class_ids[None, :]).to(cost.dtype)
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def recall_reward(
    overlaps: Tensor,
    num_gt: int,
    num_pred: int,
    thresholds: Thresholds = NO_STEP,
    *,
    boundaries: Boundaries = "code",
) -> float:
    """``f(#(overlap >= ξ0) / N_gt)`` over the matched pairs' ``overlaps`` (Eq. 5 and STEP).

    No prediction: 1.0 if there is no GT, else 0.0 (released). Predictions on an image without
    GT (the released code crashes there): 0.0, every one a false positive.
    """
    if num_pred == 0 or num_gt == 0:
        return float(num_pred == 0 and num_gt == 0)
    tp = differentiate(overlaps, thresholds.tp, thresholds.tp, boundaries).sum()
    recall = tp / num_gt
    return float(differentiate(recall, thresholds.recall_low, thresholds.recall_high, boundaries))


def precision_reward(
    overlaps: Tensor,
    num_gt: int,
    num_pred: int,
    thresholds: Thresholds = NO_STEP,
    *,
    boundaries: Boundaries = "code",
    denominator: Literal["matched", "predicted"] = "matched",
) -> float:
    """Per-instance ``f(overlap)`` of the matched pairs, summed, over M (Eq. 6 and STEP).

    ``denominator="matched"``: M = ``min(P, N)`` (paper and TRL code), extra boxes cost
    nothing; ``"predicted"``: M = P (EasyR1 code), a true precision. Empty cases as
    :func:`recall_reward`.
    """
    if num_pred == 0 or num_gt == 0:
        return float(num_pred == 0 and num_gt == 0)
    credit = differentiate(overlaps, thresholds.low, thresholds.high, boundaries).sum()
    return float(credit / (len(overlaps) if denominator == "matched" else num_pred))


# --- one completion, all criteria ------------------------------------------------------------


@dataclass(frozen=True)
class VisionR1Rules:
    """Which behaviour to follow where Vision-R1's paper and released code differ (§1.9).

    Attributes:
        overlap: ``"giou"`` (code: every matched score and threshold is on GIoU) or ``"iou"``.
        matcher: ``"l1_class_giou"`` (code) or ``"box_only"`` (paper, Table 3).
        format_check: ``"code"`` (JSON validity, negative-image inversion) or ``"paper"``.
        boundaries: ``"code"`` (``x > ξ2`` becomes 1) or ``"paper"`` (``x >= ξ2``, Eq. 8).
        precision_denominator: ``"matched"`` (paper and TRL code) or ``"predicted"`` (EasyR1).
        schedule: STEP stages, or ``None`` for the released script's default (``--adaptive``
            off): TP at 0.5, linear recall, precision = clamped overlap (:data:`NO_STEP`).
            ``StepSchedule(switch_step=1500)`` is the code's adaptive mode.
    """

    overlap: Literal["giou", "iou"] = "giou"
    matcher: Literal["l1_class_giou", "box_only"] = "l1_class_giou"
    format_check: Literal["code", "paper"] = "code"
    boundaries: Boundaries = "code"
    precision_denominator: Literal["matched", "predicted"] = "matched"
    schedule: StepSchedule | None = None

    def __post_init__(self) -> None:
        allowed = {
            "overlap": ("giou", "iou"),
            "matcher": ("l1_class_giou", "box_only"),
            "format_check": ("code", "paper"),
            "boundaries": ("code", "paper"),
            "precision_denominator": ("matched", "predicted"),
        }
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {values}")

    @classmethod
    def paper(cls, switch_fraction: float = 0.5) -> VisionR1Rules:
        """The paper's rules; STEP = 1/2 was best for Griffon-G, 1 for Qwen2.5-VL (§2.3)."""
        schedule = StepSchedule(switch_fraction=switch_fraction, recall_map="paper")
        return cls(
            overlap="iou",
            matcher="box_only",
            format_check="paper",
            boundaries="paper",
            precision_denominator="matched",
            schedule=schedule,
        )

    def thresholds(self, step: int | None, total_steps: int | None = None) -> Thresholds:
        if self.schedule is None:
            return NO_STEP
        if step is None:
            raise ValueError(
                "the STEP schedule needs the training step: TRL passes trainer_state to reward "
                "functions (or pass step=); use schedule=None to score without STEP"
            )
        return self.schedule.thresholds(step, total_steps)


@dataclass(frozen=True)
class CriteriaScores:
    """The three rewards of one completion; ``total`` is their unweighted sum (Eq. 7)."""

    format: float
    recall: float
    precision: float

    @property
    def total(self) -> float:
        return self.format + self.recall + self.precision


def _class_ids(
    gt_labels: Sequence[str], pred_labels: Sequence[str | None], id_map: Mapping | None
) -> tuple[Tensor, Tensor]:
    """Class ids as the released code forms them: through ``id_map`` (names lower-cased), GT
    names missing from it get fresh ids, unknown predicted names get 0 (background)."""
    ids = {str(k).strip().lower(): int(v) for k, v in (id_map or {}).items()}
    gt_names = [str(name).strip().lower() for name in gt_labels]
    for name in gt_names:
        ids.setdefault(name, max(ids.values(), default=0) + 1)
    pred = [ids.get(name, 0) if name is not None else 0 for name in pred_labels]
    return torch.tensor(pred, dtype=torch.int64), torch.tensor([ids[n] for n in gt_names])


def score_completion(
    text: str,
    gt_labels: Sequence[str],
    gt_boxes_xyxy: Tensor,
    *,
    rules: VisionR1Rules | None = None,
    thresholds: Thresholds = NO_STEP,
    id_map: Mapping[str, int] | None = None,
    image_hw: tuple[float, float] | None = None,
    pred_frame_hw: tuple[float, float] | None = None,
    num_instances: int | None = None,
) -> CriteriaScores:
    """Format, recall and precision of one completion; never raises on ``text``.

    Args:
        text: the model's answer.
        gt_labels, gt_boxes_xyxy: ``N`` lower-cased names and ``[N, 4]`` absolute xyxy pixels
            of the original image.
        thresholds: the STEP stage's (:meth:`VisionR1Rules.thresholds`).
        image_hw, pred_frame_hw: original image and model frame ``(height, width)``; with both,
            predictions are rescaled from the frame to the image, else used as they are.
        num_instances: for the negative-image rule of the format reward (default ``N``).
    """
    rules = rules or VisionR1Rules()
    fmt = dual_format_reward(
        text,
        len(gt_labels) if num_instances is None else num_instances,
        check=rules.format_check,
        frame_hw=pred_frame_hw or image_hw,
    )
    parsed = parse_completion(text)
    pred = torch.tensor([p.box_xyxy for p in parsed], dtype=torch.float64).reshape(-1, 4)
    if image_hw is not None and pred_frame_hw is not None:
        pred = box_ops.denormalize(box_ops.normalize(pred, pred_frame_hw), image_hw)
    gt = torch.as_tensor(gt_boxes_xyxy, dtype=torch.float64).reshape(-1, 4)
    pred_ids, gt_ids = _class_ids(gt_labels, [p.label for p in parsed], id_map)
    rows, cols = match_boxes(pred, pred_ids, gt, gt_ids, matcher=rules.matcher)
    overlaps = OVERLAPS[rules.overlap](pred[rows], gt[cols])
    counts = (len(gt), len(pred), thresholds)
    return CriteriaScores(
        format=fmt,
        recall=recall_reward(overlaps, *counts, boundaries=rules.boundaries),
        precision=precision_reward(
            overlaps, *counts, boundaries=rules.boundaries, denominator=rules.precision_denominator
        ),
    )
