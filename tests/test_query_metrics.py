"""Query-level metrics on hand-built queries whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.postprocess import QueryOutputs
from workbench.query_metrics import (
    QUERY_METRICS,
    ap_spread,
    image_stats,
    pool_metrics,
    prompted_truth,
    query_stats,
)
from workbench.rewards import matching_cost_reward
from workbench.types import Target

SIZE = (100, 200)  # (height, width)
MISS = (180.0, 80.0, 190.0, 90.0)  # overlaps no ground-truth box below


def queries(select_logits, boxes_xyxy, logits=None) -> QueryOutputs:
    """Q queries in the given (selection) order on a SIZE image, one prompt."""
    q = len(select_logits)
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(q, 4)
    return QueryOutputs(
        token_index=torch.arange(q),
        select_logits=torch.tensor(select_logits).float(),
        logits=torch.zeros(q, 1) if logits is None else logits,
        boxes_cxcywh=box_ops.convert(boxes, "xyxy", "cxcywh", dst_normalized=True, size_hw=SIZE),
        boxes_xyxy=boxes,
        image_size=SIZE,
        negative=(False,),
    )


def logit(p: float) -> float:
    return math.log(p / (1 - p))


GT = torch.tensor([[0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 70.0, 70.0], [100.0, 0.0, 140.0, 40.0]])
A, B, C = (tuple(b.tolist()) for b in GT)
NEAR_A = (0.0, 0.0, 20.0, 16.0)  # IoU 0.8 with A


def stats_of(boxes, gt=GT):
    q = queries(np.linspace(3, -3, len(boxes)).tolist(), boxes)
    return query_stats(q, gt, torch.zeros(len(gt), dtype=torch.int64))


def test_recall_counts_each_box_once_at_both_cutoffs_and_pools_over_images():
    # Q = 6: the top third is the first 2 queries, the top two thirds the first 4.
    first = stats_of([A, MISS, B, NEAR_A, C, C])
    assert (first.num_gt, first.hits_top_third, first.hits_top_two_thirds) == (3, 1, 2)
    metrics = first.metrics()
    assert metrics["recall_top_third"] == pytest.approx(1 / 3)
    assert metrics["recall_top_two_thirds"] == pytest.approx(2 / 3)
    second = stats_of([MISS, C, MISS, MISS, MISS, MISS])  # C found in the top third
    pooled = pool_metrics([first, second])
    assert pooled["recall_top_third"] == pytest.approx((1 + 1) / (3 + 3))
    assert pooled["recall_top_two_thirds"] == pytest.approx((2 + 1) / 6)
    # IoU 0.5 exactly counts, just below does not; class-agnostic: the prompt plays no part.
    half = (0.0, 0.0, 20.0, 10.0)  # IoU 0.5 with A
    below = (0.0, 0.0, 20.0, 9.9)
    assert stats_of([half, MISS, MISS], GT[:1]).hits_top_third == 1
    assert stats_of([below, MISS, MISS], GT[:1]).hits_top_third == 0
    assert math.isnan(stats_of([A, MISS, MISS], GT[:0]).metrics()["recall_top_third"])


def test_spearman_sign_follows_whether_selection_ranks_good_queries_first():
    # Boxes slide away from A one pixel per rank: the matching-cost reward falls along the order.
    sliding = [(float(i), 0.0, 20.0 + i, 20.0) for i in range(8)]
    logits = np.linspace(2, -2, 8).tolist()
    gt, label = GT[:1], torch.zeros(1, dtype=torch.int64)
    good = query_stats(queries(logits, sliding), gt, label)
    bad = query_stats(queries(logits, sliding[::-1]), gt, label)
    assert good.spearman == pytest.approx(1.0) and bad.spearman == pytest.approx(-1.0)
    # The reward is the GRQO reward: -min_j C(i, j) under the given matching costs.
    q = queries(logits, sliding[::-1])
    cxcywh = box_ops.convert(gt, "xyxy", "cxcywh", dst_normalized=True, size_hw=SIZE)
    reward = matching_cost_reward(q.logits, q.boxes_cxcywh, label, cxcywh, LossConfig())
    assert (reward[1:] > reward[:-1]).all()


def test_spearman_value_with_ties_matches_scipy_and_undefined_cases_are_ignored():
    boxes = torch.tensor([MISS] * 4)
    s = image_stats(torch.tensor([4.0, 3, 2, 1]), boxes, torch.tensor([1.0, 3, 2, 4]), GT)
    assert s.spearman == pytest.approx(-0.8)  # 1 - 6 * 18 / (4 * 15)
    tied = image_stats(torch.tensor([2.0, 1, 1]), boxes[:3], torch.tensor([1.0, 2, 3]), GT)
    expected = spearmanr([2.0, 1, 1], [1.0, 2, 3]).statistic
    assert tied.spearman == pytest.approx(expected) and tied.spearman == pytest.approx(-0.866, 1e-3)
    flat = image_stats(torch.tensor([3.0, 2, 1]), boxes[:3], torch.ones(3), GT)
    no_gt = image_stats(torch.tensor([3.0, 2, 1]), boxes[:3], None, GT[:0])
    assert math.isnan(flat.spearman) and math.isnan(no_gt.spearman)
    pooled = pool_metrics([s, flat, no_gt, tied])
    assert pooled["spearman_select_reward"] == pytest.approx((-0.8 + expected) / 2)


def test_ece_is_zero_when_calibrated_and_the_gap_when_not():
    # Q = 24: the top third is 8 queries. 4 at objectness 0.25 of which 1 hits, 4 at 0.75 of
    # which 3 hit: every bin's hit rate equals its objectness.
    logits = [logit(0.75)] * 4 + [logit(0.25)] * 4 + [-5.0] * 16
    boxes = [A, B, C, MISS] + [A, MISS, MISS, MISS] + [A] * 16
    calibrated = stats_of_logits(logits, boxes)
    assert sum(calibrated.bin_count) == 8 and sum(calibrated.bin_hits) == 4
    assert calibrated.metrics()["ece_objectness"] == pytest.approx(0.0, abs=1e-6)
    # Confident misses and timid hits: 0.9 objectness, no hit; 0.1 objectness, all hit.
    logits = [logit(0.9)] * 4 + [logit(0.1)] * 4 + [-5.0] * 16
    boxes = [MISS] * 4 + [A, B, C, A] + [A] * 16
    overconfident = stats_of_logits(logits, boxes)
    assert overconfident.metrics()["ece_objectness"] == pytest.approx(0.9, abs=1e-6)
    # Pooled over images, weighted by counts: (8 * 0 + 8 * 0.9) / 16.
    pooled = pool_metrics([calibrated, overconfident])["ece_objectness"]
    assert pooled == pytest.approx(0.45, abs=1e-6)


def stats_of_logits(select_logits, boxes):
    return query_stats(queries(select_logits, boxes), GT, torch.zeros(3, dtype=torch.int64))


def test_ap_spread_is_the_sample_standard_deviation():
    # mean 0.3; squared deviations sum to 0.1; over n - 1 = 4 draws: 0.025
    assert ap_spread([0.2, 0.4, 0.3, 0.5, 0.1]) == pytest.approx(math.sqrt(0.025))
    assert math.isnan(ap_spread([0.3]))


def test_prompted_truth_keeps_non_crowd_boxes_of_prompted_classes_by_prompt_index():
    target = Target(
        boxes_cxcywh=torch.tensor(
            [[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]
        ),
        labels=torch.tensor([4, 2, 4, 9]),
        image_id=1,
        size=SIZE,
        orig_size=SIZE,
        iscrowd=torch.tensor([False, False, True, False]),
    )
    boxes, prompt_index = prompted_truth(target, [2, 4])  # prompt 0 is label 2, prompt 1 label 4
    assert prompt_index.tolist() == [1, 0]
    torch.testing.assert_close(boxes[0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    assert set(QUERY_METRICS) == set(pool_metrics([]))
