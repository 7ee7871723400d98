"""Per-query rewards for GRQO, group advantages, and the STEP thresholds shared with Vision-R1.

Rewards are plain named functions (TRL's habit). Every entry of :data:`REWARDS` is called alike::

    reward(pred_logits [Q, U], pred_boxes_cxcywh [Q, 4], target_labels [N], target_boxes [N, 4],
           cfg: LossConfig) -> [Q] float32

for one image (one decoder layer), with normalised cxcywh boxes and target labels that are prompt
indices in ``[0, U)``. The result keeps the autograd graph: GRQO has no log-probability factor, so
its gradient flows through the reward itself (docs/method.md#where-grqos-gradient-comes-from). An
image without ground truth gets NaN for every query, which means "no reward for an image without
ground truth"; :func:`group_advantages` turns such a group into zeros, so the objective can skip it.

``vision_r1`` takes its STEP thresholds as a keyword; an objective that follows a schedule binds
them per step: ``functools.partial(vision_r1_query_reward, thresholds=schedule.thresholds(step,
total_steps))``. Unbound, it uses the initial stage (:data:`STAGE_1`).

STEP (Vision-R1 §3.3, vision-r1-grpo.md §2) lives here because both the query reward and the
text-completion rewards of :mod:`workbench.vlm.rewards` use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.matching import pairwise_cost, pairwise_cost_terms

Boundaries = Literal["code", "paper"]

# --- STEP: differentiation and staged thresholds ---------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of one STEP stage (Vision-R1 §3.3; vision-r1-grpo.md §1.6, §1.7, §2).

    Attributes:
        tp: ξ0, a matched prediction whose overlap reaches it is a true positive (recall).
        low, high: ξ1, ξ2 of the per-instance precision map: 0 below ``low``, 1 above ``high``.
        recall_low, recall_high: the same map applied once to a completion's recall.
    """

    tp: float
    low: float
    high: float
    recall_low: float
    recall_high: float

    def __post_init__(self) -> None:
        if not (self.low <= self.high and self.recall_low <= self.recall_high):
            raise ValueError(f"thresholds need low <= high and recall_low <= recall_high: {self}")


# Released code with adaptive off (its script's default): TP at 0.5, recall linear, precision the
# matched overlap with negative GIoU clamped to 0.
NO_STEP = Thresholds(tp=0.5, low=0.0, high=1.0, recall_low=0.0, recall_high=1.0)
STAGE_1 = Thresholds(tp=0.5, low=0.5, high=0.75, recall_low=0.5, recall_high=0.75)
# Stage 2: the paper raises every threshold; the released code keeps recall's map at stage 1's.
STAGE_2_PAPER = Thresholds(tp=0.75, low=0.75, high=0.9, recall_low=0.75, recall_high=0.9)
STAGE_2_CODE = Thresholds(tp=0.75, low=0.75, high=0.9, recall_low=0.5, recall_high=0.75)
RELEASED_SWITCH_STEP = 1500  # Griffon's qwen_trainer.py: stage 2 from global_step 1500


def differentiate(x: Tensor, low: float, high: float, boundaries: Boundaries = "code") -> Tensor:
    """Vision-R1's Eq. 8: 0 below ``low``, 1 above ``high``, ``x`` in between (any shape).

    The map widens the reward gaps inside a group whose completions are nearly equally good.
    ``boundaries="paper"`` sends ``x >= high`` to 1 (Eq. 8); ``"code"`` (released code) only
    ``x > high``, so with ``low == high`` an ``x`` exactly at the threshold keeps its value.
    Differentiable between the thresholds, constant outside.
    """
    top = x >= high if boundaries == "paper" else x > high
    return torch.where(x < low, torch.zeros_like(x), torch.where(top, torch.ones_like(x), x))


@dataclass(frozen=True)
class StepSchedule:
    """Two STEP stages: :data:`STAGE_1`, then stage 2 from a step on.

    Give exactly one of ``switch_step`` (the released code: 1500 optimizer steps,
    :data:`RELEASED_SWITCH_STEP`) or ``switch_fraction`` (the paper's "STEP" in (0, 1]: stage 2
    from ``ceil(fraction * total_steps)``; 1 never advances). ``recall_map`` picks stage 2's
    recall map: ``"code"`` keeps (0.5, 0.75), ``"paper"`` raises it to (0.75, 0.9).
    """

    switch_step: int | None = None
    switch_fraction: float | None = None
    recall_map: Boundaries = "code"

    def __post_init__(self) -> None:
        if (self.switch_step is None) == (self.switch_fraction is None):
            raise ValueError(
                "StepSchedule needs exactly one of switch_step (the released code used 1500) "
                "or switch_fraction (the paper's STEP: 1/3, 1/2 or 1)"
            )
        if self.switch_step is not None and self.switch_step < 0:
            raise ValueError(f"switch_step must be >= 0, got {self.switch_step}")
        if self.switch_fraction is not None and not 0 < self.switch_fraction <= 1:
            raise ValueError(f"switch_fraction must lie in (0, 1], got {self.switch_fraction}")
        if self.recall_map not in ("code", "paper"):
            raise ValueError(f"recall_map must be 'code' or 'paper', got {self.recall_map!r}")

    def switch_at(self, total_steps: int | None = None) -> float:
        """The first step of stage 2 (``inf`` if training never gets there)."""
        if self.switch_step is not None:
            return float(self.switch_step)
        if self.switch_fraction == 1:
            return math.inf
        if total_steps is None:
            raise ValueError(
                f"StepSchedule(switch_fraction={self.switch_fraction}) needs the run's total "
                "number of steps; pass total_steps (TRL: trainer_state.max_steps)"
            )
        # The tolerance keeps 1/3 * 9 at 3 despite floating point.
        return float(math.ceil(self.switch_fraction * total_steps - 1e-9))

    def stage(self, step: int, total_steps: int | None = None) -> int:
        """1 or 2 at optimizer step ``step`` (counted from 0)."""
        return 2 if step >= self.switch_at(total_steps) else 1

    def thresholds(self, step: int, total_steps: int | None = None) -> Thresholds:
        if self.stage(step, total_steps) == 1:
            return STAGE_1
        return STAGE_2_PAPER if self.recall_map == "paper" else STAGE_2_CODE


# --- per-query rewards (GRQO) ----------------------------------------------------------------


def _check_query_inputs(
    pred_logits: Tensor, pred_boxes: Tensor, target_labels: Tensor, target_boxes: Tensor
) -> None:
    q, u = pred_logits.shape if pred_logits.ndim == 2 else (-1, -1)
    n = target_labels.shape[0] if target_labels.ndim == 1 else -1
    if q < 0 or tuple(pred_boxes.shape) != (q, 4) or tuple(target_boxes.shape) != (n, 4):
        raise ValueError(
            "expected pred_logits [Q, U], pred_boxes [Q, 4], target_labels [N], target_boxes "
            f"[N, 4]; got {tuple(pred_logits.shape)}, {tuple(pred_boxes.shape)}, "
            f"{tuple(target_labels.shape)}, {tuple(target_boxes.shape)}"
        )
    if n > 0 and (int(target_labels.min()) < 0 or int(target_labels.max()) >= u):
        raise ValueError(
            f"target_labels must be prompt indices in [0, {u}), got {target_labels.tolist()}"
        )


def _no_reward(pred_boxes: Tensor) -> Tensor:
    return torch.full((pred_boxes.shape[0],), math.nan, device=pred_boxes.device)


def matching_cost_reward(
    pred_logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    target_labels: Tensor,
    target_boxes_cxcywh: Tensor,
    cfg: LossConfig,
) -> Tensor:
    """DINO-R1's reward (method.md#grqo-reward-advantage-and-mute): ``r_i = -min_j C(i, j)`` with C
    the Hungarian matching cost.

    C is :func:`workbench.matching.pairwise_cost` (focal class cost over all prompts, L1 and
    -GIoU, weighted by ``cfg``), computed for every query, not only the matched ones. Returns
    ``[Q]`` float32 with the graph kept; all NaN when ``N = 0`` (no reward without ground truth).
    """
    cost = pairwise_cost(pred_logits, pred_boxes_cxcywh, target_labels, target_boxes_cxcywh, cfg)
    if cost.shape[1] == 0:
        return _no_reward(pred_boxes_cxcywh)
    return -cost.min(dim=1).values


def iou_alignment_reward(
    pred_logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    target_labels: Tensor,
    target_boxes_cxcywh: Tensor,
    cfg: LossConfig | None = None,
    *,
    use_scores: bool = True,
) -> Tensor:
    """``r_i = max_j IoU(b_i, g_j) * sigmoid(s_i[l_j])``: localisation times classification.

    A query scores high only if one box both overlaps it and has its prompt scored high by it,
    which aligns the two heads; ``use_scores=False`` gives the plain best IoU. In [0, 1],
    differentiable (through the arg-max pair). ``cfg`` is unused: every :data:`REWARDS` entry is
    called alike. Returns ``[Q]`` float32; all NaN when ``N = 0``.
    """
    _check_query_inputs(pred_logits, pred_boxes_cxcywh, target_labels, target_boxes_cxcywh)
    if target_labels.numel() == 0:
        return _no_reward(pred_boxes_cxcywh)
    with torch.autocast(device_type=pred_logits.device.type, enabled=False):
        boxes = pred_boxes_cxcywh.float()
        iou = box_ops.box_iou(
            box_ops.cxcywh_to_xyxy(boxes), box_ops.cxcywh_to_xyxy(target_boxes_cxcywh.to(boxes))
        )
        if use_scores:
            iou = iou * pred_logits.float().sigmoid()[:, target_labels]
        return iou.max(dim=1).values


# Overlap of matched pairs ``[..., 4] x [..., 4]`` xyxy -> ``[...]``: the released Vision-R1 code
# scores with GIoU, the paper says IoU.
OVERLAPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "giou": box_ops.elementwise_generalized_box_iou,
    "iou": box_ops.elementwise_box_iou,
}


def vision_r1_query_reward(
    pred_logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    target_labels: Tensor,
    target_boxes_cxcywh: Tensor,
    cfg: LossConfig,
    *,
    thresholds: Thresholds = STAGE_1,
    boundaries: Boundaries = "code",
    overlap: Literal["giou", "iou"] = "giou",
    weight_by_score: bool = True,
) -> Tensor:
    """Vision-R1's precision criterion per query: ``r_i = f(o_i) * sigmoid(s_i[l_j])`` if matched.

    1. Box-prioritised one-to-one matching: Hungarian on ``cfg.cost_bbox * L1 + cfg.cost_giou *
       (-GIoU)``. The paper's box-only matcher (its Table 3); the released code's unit label term
       is dominated by pixel L1 there, but would dominate normalised L1 here, so it is left out.
    2. ``o_i``: GIoU (the released code) or IoU (the paper) of query i with its matched box j.
    3. ``f``: the stage's per-instance map :func:`differentiate` (0 below ``thresholds.low``, 1
       above ``thresholds.high``), so a box counts only once it clears the STEP threshold.
    4. Times the query's score for box j's prompt (``weight_by_score``), so classification gets
       a gradient too; without it, only boxes in the pass-through band do.

    The ``Q - N`` unmatched queries get 0, as a prediction below the threshold does: the group
    mean then rewards the queries that won a box. Returns ``[Q]`` float32; all NaN when N = 0.
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {sorted(OVERLAPS)}, got {overlap!r}")
    terms = pairwise_cost_terms(
        pred_logits, pred_boxes_cxcywh, target_labels, target_boxes_cxcywh, cfg
    )
    if target_labels.numel() == 0:
        return _no_reward(pred_boxes_cxcywh)
    box_cost = cfg.cost_bbox * terms["cost_bbox"] + cfg.cost_giou * terms["cost_giou"]
    rows, cols = linear_sum_assignment(box_cost.detach().cpu().numpy())
    rows = torch.as_tensor(rows, device=pred_boxes_cxcywh.device)
    cols = torch.as_tensor(cols, device=pred_boxes_cxcywh.device)
    with torch.autocast(device_type=pred_logits.device.type, enabled=False):
        pred = box_ops.cxcywh_to_xyxy(pred_boxes_cxcywh.float()[rows])
        gt = box_ops.cxcywh_to_xyxy(target_boxes_cxcywh.float()[cols])
        o = OVERLAPS[overlap](pred, gt)
        credit = differentiate(o, thresholds.low, thresholds.high, boundaries)
        if weight_by_score:
            credit = credit * pred_logits.float().sigmoid()[rows, target_labels[cols]]
        return credit.new_zeros(pred_boxes_cxcywh.shape[0]).index_put((rows,), credit)


QueryReward = Callable[[Tensor, Tensor, Tensor, Tensor, LossConfig], Tensor]
REWARDS: dict[str, QueryReward] = {
    "matching_cost": matching_cost_reward,
    "iou_alignment": iou_alignment_reward,
    "vision_r1": vision_r1_query_reward,
}
# Rewards whose value for a query depends on that query's prediction only (not on a matching
# among the queries), so any set of queries can be scored in one call.
ROWWISE_REWARDS = frozenset({matching_cost_reward, iou_alignment_reward})


# --- advantages ------------------------------------------------------------------------------


def group_advantages(
    rewards: Tensor, mute: int = 0, eps: float = 2e-9, unbiased: bool = True
) -> Tensor:
    """Group-relative advantages ``(r - mean) / (std + eps)`` over the last dimension.

    Args:
        rewards: ``[G]`` or ``[B, G]`` (any leading shape): one group per row, e.g. the queries
            of one image and decoder layer (GRQO) or the completions of one prompt (GRPO).
        mute: the last ``mute`` entries of every group get advantage 0 *after* normalisation
            (DINO-R1 mutes the 300 lowest-ranked of 900 queries,
            method.md#grqo-reward-advantage-and-mute). Without muting, a standardised group sums to
            0 and ``-mean(A)`` has no gradient (method.md#where-grqos-gradient-comes-from).
        eps: added to the std (DINO-R1: 2e-9; TRL: 1e-4).
        unbiased: Bessel-corrected std (``torch.std``'s default, as both DINO-R1 and TRL).

    Returns:
        Same shape as ``rewards``, differentiable through them. A group holding a NaN (or
        infinite) reward, a group whose rewards are all equal and a group of one give zeros,
        with finite gradients.
    """
    if rewards.ndim == 0:
        raise ValueError("rewards must be [G] or [B, G], got a scalar")
    g = rewards.shape[-1]
    if not 0 <= mute <= g:
        raise ValueError(f"mute must lie in [0, {g}] for groups of {g}, got {mute}")
    if g == 1:
        return torch.zeros_like(rewards)
    bad = ~torch.isfinite(rewards).all(dim=-1, keepdim=True)
    # Zero the bad groups before any arithmetic, so no NaN reaches the backward pass.
    r = torch.where(bad, torch.zeros_like(rewards), rewards)
    flat = r.amax(dim=-1, keepdim=True) == r.amin(dim=-1, keepdim=True)
    var = r.var(dim=-1, keepdim=True, correction=int(unbiased))
    # sqrt's derivative is infinite at 0; a flat group takes sqrt(1) and is zeroed below.
    std = torch.where(flat, torch.ones_like(var), var).sqrt()
    adv = (r - r.mean(dim=-1, keepdim=True)) / (std + eps)
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    keep = torch.arange(g, device=rewards.device) < g - mute
    return adv * keep
