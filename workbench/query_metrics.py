"""Query-level metrics: does query selection put the queries that find objects first?

Queries come from the model in selection order (descending selection logit): the
:class:`~workbench.postprocess.QueryOutputs` of ``Predictor.predict(..., return_queries=True)``
(``select_logits [Q]``, ``logits [Q, U]``, boxes), Q queries per image. Ground truth is the image's
non-crowd boxes of the prompted classes, labelled by prompt index.

- ``recall_top_third``, ``recall_top_two_thirds``: share of ground-truth boxes (non-crowd, of
  prompted classes) that have IoU >= 0.5 with the final-layer box of at least one of the first
  round(Q/3) (resp. round(2Q/3)) selected queries; class-agnostic (selection is class-agnostic
  objectness). Pooled over all images (sum of hits / sum of GT).
- ``spearman_select_reward``: per image with ground truth, Spearman rank correlation between the
  selection logits and the GRQO reward of the queries, reward = -min_j C(i, j) with C the
  Hungarian matching cost (:func:`workbench.rewards.matching_cost_reward`), on the final layer,
  targets relabelled to prompt indices; averaged over images (ignore images where it is
  undefined). Ranks of ties are averaged (``scipy.stats.rankdata``); it is undefined when the
  logits or the rewards are all equal.
- ``ece_objectness``: expected calibration error of the objectness sigmoid(select_logit) of the
  first round(Q/3) selected queries, against the event "the query's final box has IoU >= 0.5 with
  some ground-truth box"; 10 equal-width bins on [0, 1], weighted by bin counts, pooled over
  images. An image without ground truth takes part: every event is false there.
- ``ap_std_draws`` (cross-image protocol only, computed by :mod:`workbench.evaluation`): standard
  deviation (ddof=1) of AP over 5 different cross-image exemplar draws (eval seed + 0..4), with
  the 5 APs listed in the JSON (``eval.exemplar_draws`` sets how many; 1 or 0 disables it).

Per image, :func:`query_stats` counts; :func:`pool_metrics` turns the counts of many images (or
of one) into the metrics::

    stats = [query_stats(queries, gt_boxes_xyxy, gt_prompt_index) for ...]
    pool_metrics(stats)   # {"recall_top_third": ..., "spearman_select_reward": ..., ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.data.prompts import prompted_rows
from workbench.postprocess import QueryOutputs
from workbench.rewards import matching_cost_reward
from workbench.types import Target

QUERY_METRICS = (
    "recall_top_third",
    "recall_top_two_thirds",
    "spearman_select_reward",
    "ece_objectness",
)
IOU_HIT = 0.5
ECE_BINS = 10


@dataclass(frozen=True)
class QueryStats:
    """The query-level counts of one image; :func:`pool_metrics` turns them into the metrics.

    Attributes:
        num_gt: ground-truth boxes (non-crowd, of prompted classes).
        hits_top_third, hits_top_two_thirds: those with IoU >= 0.5 to a box of the first
            round(Q/3), round(2Q/3) queries.
        spearman: rank correlation of selection logit and reward; NaN when undefined.
        bin_count, bin_objectness, bin_hits: per objectness bin (10 on [0, 1]), over the first
            round(Q/3) queries: how many fall in it, their summed objectness, how many hit a box.
    """

    num_gt: int
    hits_top_third: int
    hits_top_two_thirds: int
    spearman: float
    bin_count: tuple[int, ...]
    bin_objectness: tuple[float, ...]
    bin_hits: tuple[int, ...]

    def metrics(self) -> dict[str, float]:
        """This image's own metrics (NaN where undefined, e.g. recall without ground truth)."""
        return pool_metrics([self])


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two ``[Q]`` vectors, ranks of ties averaged (equal to
    ``scipy.stats.spearmanr``); NaN when either is constant."""
    ra = rankdata(np.asarray(a, dtype=np.float64))
    rb = rankdata(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else math.nan


def image_stats(
    select_logits: Tensor, boxes_xyxy: Tensor, rewards: Tensor | None, gt_boxes_xyxy: Tensor
) -> QueryStats:
    """The counts of one image from its queries in selection order.

    Args:
        select_logits: ``[Q]`` selection logits, descending (selection order).
        boxes_xyxy: ``[Q, 4]`` the queries' final-layer boxes, absolute pixels.
        rewards: ``[Q]`` each query's reward (None without ground truth).
        gt_boxes_xyxy: ``[N, 4]`` ground truth, absolute pixels of the same image.
    """
    q = int(select_logits.shape[0])
    third, two_thirds = round(q / 3), round(2 * q / 3)
    found = box_ops.box_iou(boxes_xyxy.float(), gt_boxes_xyxy.float().reshape(-1, 4)) >= IOU_HIT
    objectness = select_logits[:third].float().sigmoid()
    bins = (objectness * ECE_BINS).long().clamp(0, ECE_BINS - 1)
    hits = found[:third].any(dim=1).float()
    has_gt = found.shape[1] > 0 and rewards is not None
    return QueryStats(
        num_gt=int(found.shape[1]),
        hits_top_third=int(found[:third].any(dim=0).sum()),
        hits_top_two_thirds=int(found[:two_thirds].any(dim=0).sum()),
        spearman=spearman(select_logits, rewards) if has_gt else math.nan,
        bin_count=tuple(torch.bincount(bins, minlength=ECE_BINS).tolist()),
        bin_objectness=tuple(torch.zeros(ECE_BINS).index_add_(0, bins, objectness).tolist()),
        bin_hits=tuple(int(v) for v in torch.zeros(ECE_BINS).index_add_(0, bins, hits).tolist()),
    )


def query_stats(
    queries: QueryOutputs,
    gt_boxes_xyxy: Tensor,
    gt_prompt_index: Tensor,
    loss: LossConfig | None = None,
) -> QueryStats:
    """The counts of one image from its :class:`QueryOutputs`.

    Args:
        gt_boxes_xyxy: ``[N, 4]`` non-crowd ground truth of the prompted classes, absolute
            pixels of the original image.
        gt_prompt_index: ``[N]`` int64 the prompt (index into the queries' ``logits`` columns)
            of each box.
        loss: the matching-cost weights of the reward (default: DINO's, ``LossConfig()``).
    """
    rewards = None
    if gt_boxes_xyxy.shape[0]:
        gt_cxcywh = box_ops.convert(
            gt_boxes_xyxy.float(), "xyxy", "cxcywh", dst_normalized=True, size_hw=queries.image_size
        )
        with torch.no_grad():
            rewards = matching_cost_reward(
                queries.logits,
                queries.boxes_cxcywh,
                gt_prompt_index.long(),
                gt_cxcywh,
                loss or LossConfig(),
            )
    return image_stats(queries.select_logits, queries.boxes_xyxy, rewards, gt_boxes_xyxy)


def prompted_truth(target: Target, prompt_labels: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The image's non-crowd boxes of the prompted classes: ``[N, 4]`` absolute xyxy pixels of
    the original image, and ``[N]`` int64 the index of each box's prompt in ``prompt_labels``
    (the dataset label of each prompt)."""
    rows, prompt_index = prompted_rows(target, prompt_labels)
    return target.boxes_xyxy(target.orig_size)[rows].reshape(-1, 4), prompt_index


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def pool_metrics(stats: Sequence[QueryStats]) -> dict[str, float]:
    """The metrics of :data:`QUERY_METRICS` over images (see the module docstring); NaN where
    no image defines one."""
    rhos = [s.spearman for s in stats if not math.isnan(s.spearman)]
    bins = [(s.bin_count, s.bin_objectness, s.bin_hits) for s in stats]
    count, confidence, hits = np.reshape(bins, (-1, 3, ECE_BINS)).sum(axis=0)
    num_gt = sum(s.num_gt for s in stats)
    return {
        "recall_top_third": _ratio(sum(s.hits_top_third for s in stats), num_gt),
        "recall_top_two_thirds": _ratio(sum(s.hits_top_two_thirds for s in stats), num_gt),
        "spearman_select_reward": float(np.mean(rhos)) if rhos else math.nan,
        # sum_b (n_b / N) |acc_b - conf_b| = sum_b |hits_b - objectness_b| / N
        "ece_objectness": _ratio(float(np.abs(hits - confidence).sum()), float(count.sum())),
    }


def ap_spread(aps: Sequence[float]) -> float:
    """Standard deviation (ddof=1) of the APs of several exemplar draws; NaN for fewer than 2."""
    return float(np.std(aps, ddof=1)) if len(aps) >= 2 else math.nan
