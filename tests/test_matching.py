"""Matching cost and Hungarian matcher: hand-computed costs and assignment invariants."""

import itertools
import math

import pytest
import torch

from workbench.config import LossConfig
from workbench.matching import HungarianMatcher, pairwise_cost, pairwise_cost_terms
from workbench.types import Target

CFG = LossConfig()


def make_target(labels, boxes_cxcywh, iscrowd=None, image_id=0):
    return Target(
        boxes_cxcywh=torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4),
        labels=torch.as_tensor(labels, dtype=torch.int64),
        image_id=image_id,
        size=(100, 100),
        orig_size=(100, 100),
        iscrowd=None if iscrowd is None else torch.as_tensor(iscrowd, dtype=torch.bool),
    )


def random_boxes(n, generator):
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def random_case(bsz, num_queries, num_prompts, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(bsz, num_queries, num_prompts, generator=g) * 2,
        "pred_boxes": random_boxes(bsz * num_queries, g).view(bsz, num_queries, 4),
    }
    targets = [
        make_target(torch.randint(0, num_prompts, (n,), generator=g), random_boxes(n, g), None, b)
        for b, n in enumerate(sizes)
    ]
    return outputs, targets


def hand_focal_cost(logit_row, label, alpha=0.25, gamma=2.0):
    total = 0.0
    for c, x in enumerate(logit_row):
        p = 1 / (1 + math.exp(-x))
        if c == label:
            total += alpha * (1 - p) ** gamma * -math.log(p + 1e-12)
        else:
            total += (1 - alpha) * p**gamma * -math.log(1 - p + 1e-12)
    return total


def hand_giou(a, b):
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def test_pairwise_cost_matches_a_hand_computation():
    logits = [[2.0, -1.0, 0.5], [-3.0, 1.5, 0.0]]
    boxes = [[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]]
    labels = [2, 0]
    gt = [[0.45, 0.5, 0.25, 0.2], [0.3, 0.65, 0.15, 0.3]]
    cost = pairwise_cost(
        torch.tensor(logits), torch.tensor(boxes), torch.tensor(labels), torch.tensor(gt), CFG
    )
    for i, j in itertools.product(range(2), range(2)):
        l1 = sum(abs(p - t) for p, t in zip(boxes[i], gt[j], strict=True))
        expected = (
            2.0 * hand_focal_cost(logits[i], labels[j])
            + 5.0 * l1
            - 2.0 * hand_giou(boxes[i], gt[j])
        )
        assert cost[i, j].item() == pytest.approx(expected, rel=1e-5)


def test_cost_terms_sum_to_the_weighted_cost_and_carry_gradient():
    outputs, targets = random_case(1, 5, 3, [4], seed=1)
    logits = outputs["pred_logits"][0].requires_grad_()
    boxes = outputs["pred_boxes"][0].requires_grad_()
    cfg = LossConfig(cost_class=1.5, cost_bbox=3.0, cost_giou=0.5)
    args = (logits, boxes, targets[0].labels, targets[0].boxes_cxcywh, cfg)
    terms = pairwise_cost_terms(*args)
    total = pairwise_cost(*args)
    assert set(terms) == {"cost_class", "cost_bbox", "cost_giou"}
    weighted = 1.5 * terms["cost_class"] + 3.0 * terms["cost_bbox"] + 0.5 * terms["cost_giou"]
    torch.testing.assert_close(total, weighted)
    # GRQO's reward: -min_j C(i, j), differentiated back to logits and boxes.
    (-total.min(dim=1).values).sum().backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0


def test_cost_is_float32_under_bf16_autocast():
    outputs, targets = random_case(1, 4, 2, [3], seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = pairwise_cost(
            outputs["pred_logits"][0].bfloat16(),
            outputs["pred_boxes"][0].bfloat16(),
            targets[0].labels,
            targets[0].boxes_cxcywh,
            CFG,
        )
    assert cost.dtype == torch.float32 and torch.isfinite(cost).all()


def test_labels_outside_the_prompts_are_rejected():
    with pytest.raises(ValueError, match="assign_targets"):
        pairwise_cost(torch.zeros(2, 2), torch.rand(2, 4), torch.tensor([2]), torch.rand(1, 4), CFG)


def test_perfect_predictions_are_matched_to_their_targets():
    gt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.6, 0.5, 0.3, 0.2], [0.8, 0.8, 0.1, 0.2]])
    labels = torch.tensor([1, 0, 1])
    perm = torch.tensor([4, 0, 2])  # query perm[j] predicts target j exactly
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5]]).repeat(5, 1)
    logits = torch.full((5, 2), -8.0)
    boxes[perm] = gt
    logits[perm, labels] = 8.0
    outputs = {"pred_logits": logits[None], "pred_boxes": boxes[None]}
    ((rows, cols),) = HungarianMatcher(CFG)(outputs, [make_target(labels, gt)])
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 4, 1: 0, 2: 2}
    assert rows.tolist() == sorted(rows.tolist())


def test_batched_matching_equals_image_by_image():
    outputs, targets = random_case(3, 6, 4, [2, 0, 5], seed=3)
    matcher = HungarianMatcher(CFG)
    batched = matcher(outputs, targets)
    for b, target in enumerate(targets):
        single = {k: v[b : b + 1] for k, v in outputs.items()}
        ((rows, cols),) = matcher(single, [target])
        assert torch.equal(batched[b][0], rows) and torch.equal(batched[b][1], cols)
    assert batched[1][0].numel() == 0 and batched[1][0].dtype == torch.int64


def test_every_image_without_targets_gives_empty_matches():
    outputs, targets = random_case(2, 4, 3, [0, 0], seed=4)
    for rows, cols in HungarianMatcher(CFG)(outputs, targets):
        assert rows.shape == cols.shape == (0,)


def test_more_targets_than_queries_matches_every_query_once():
    outputs, targets = random_case(1, 3, 2, [7], seed=5)
    ((rows, cols),) = HungarianMatcher(CFG)(outputs, targets)
    assert sorted(rows.tolist()) == [0, 1, 2]
    assert len(set(cols.tolist())) == 3 and all(0 <= c < 7 for c in cols.tolist())


def test_zero_prompts_and_zero_targets():
    outputs = {"pred_logits": torch.zeros(2, 4, 0), "pred_boxes": torch.rand(2, 4, 4)}
    targets = [make_target([], torch.zeros(0, 4)) for _ in range(2)]
    assert all(r.numel() == 0 for r, _ in HungarianMatcher(CFG)(outputs, targets))


def test_matching_follows_a_permutation_of_the_queries():
    outputs, targets = random_case(1, 7, 3, [4], seed=6)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    matcher = HungarianMatcher(CFG)
    ((rows, cols),) = matcher(outputs, targets)
    ((prow, pcol),) = matcher(permuted, targets)
    # Permuted query k is original query perm[k]: the same (query, target) pairs must come back.
    original = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert set(zip(perm[prow].tolist(), pcol.tolist(), strict=True)) == original


@pytest.mark.parametrize("seed", range(8))
def test_matching_reaches_the_brute_force_optimum(seed):
    num_queries, num_targets = (5, 3) if seed % 2 else (3, 4)
    outputs, targets = random_case(1, num_queries, 3, [num_targets], seed=seed)
    ((rows, cols),) = HungarianMatcher(CFG)(outputs, targets)
    cost = pairwise_cost(
        outputs["pred_logits"][0],
        outputs["pred_boxes"][0],
        targets[0].labels,
        targets[0].boxes_cxcywh,
        CFG,
    )
    found = cost[rows, cols].sum().item()
    k = min(num_queries, num_targets)
    best = min(
        sum(cost[q, t].item() for q, t in zip(qs, ts, strict=True))
        for qs in itertools.permutations(range(num_queries), k)
        for ts in itertools.combinations(range(num_targets), k)
    )
    assert len(rows) == k
    assert found == pytest.approx(best, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("bad", ["pred_logits", "pred_boxes"])
def test_non_finite_predictions_raise_a_clear_error(bad):
    outputs, targets = random_case(2, 4, 3, [2, 2], seed=7)
    outputs[bad][1, 2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"image 1 .*{bad} has 1 non-finite"):
        HungarianMatcher(CFG)(outputs, targets)


def test_infinite_logits_still_give_finite_costs():
    # Saturated sigmoids are bounded by the eps inside the logs, as in mmdet's cost.
    logits = torch.tensor([[float("inf"), float("-inf")]])
    cost = pairwise_cost(logits, torch.rand(1, 4), torch.tensor([1]), torch.rand(1, 4), CFG)
    assert torch.isfinite(cost).all()
