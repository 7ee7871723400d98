"""The per-query table: matching, IoU, cost, reward and advantage of each query."""

import math

import numpy as np
import pytest
import torch

from workbench.analysis import (
    GroundTruth,
    query_table,
    table_from_outputs,
    to_dataframe,
    to_records,
)
from workbench.config import GRQOConfig, LossConfig, load_config
from workbench.model.build import build_detector
from workbench.postprocess import QueryOutputs
from workbench.predictor import Predictor
from workbench.types import Exemplar, VisualPrompt

H, W = 100, 200
GT = torch.tensor([[20.0, 20.0, 60.0, 60.0], [100.0, 40.0, 180.0, 90.0]])
QUERIES = torch.tensor(
    [[20.0, 20.0, 60.0, 60.0], [100.0, 40.0, 140.0, 90.0], [0.0, 80.0, 10.0, 100.0]]
)
LOGITS = torch.tensor([[4.0, -4.0], [-1.0, 1.0], [-3.0, -3.0]])
DEFAULTS = {"grqo": GRQOConfig(), "loss": LossConfig()}  # a training run's settings


def normalised_cxcywh(xyxy):
    x0, y0, x1, y1 = xyxy
    return [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]


def hand_cost(logits, box, gt_box, gt_label, alpha=0.25, gamma=2.0):
    """2 * binary focal cost + 5 * L1 (normalised cxcywh) - 2 * GIoU, written out by hand."""
    focal = 0.0
    for c, s in enumerate(logits):
        p = 1 / (1 + math.exp(-s))
        if c == gt_label:
            focal += alpha * (1 - p) ** gamma * -math.log(p + 1e-12)
        else:
            focal += (1 - alpha) * p**gamma * -math.log(1 - p + 1e-12)
    l1 = sum(
        abs(a - b) for a, b in zip(normalised_cxcywh(box), normalised_cxcywh(gt_box), strict=True)
    )
    ix = max(0.0, min(box[2], gt_box[2]) - max(box[0], gt_box[0]))
    iy = max(0.0, min(box[3], gt_box[3]) - max(box[1], gt_box[1]))
    inter = ix * iy
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    union = area(box) + area(gt_box) - inter
    hull = (max(box[2], gt_box[2]) - min(box[0], gt_box[0])) * (
        max(box[3], gt_box[3]) - min(box[1], gt_box[1])
    )
    giou = inter / union - (hull - union) / hull
    return 2 * focal + 5 * l1 - 2 * giou, inter / union


def constructed():
    boxes = torch.tensor([normalised_cxcywh(b.tolist()) for b in QUERIES])
    return QueryOutputs(
        token_index=torch.tensor([7, 3, 11]),
        select_logits=torch.tensor([2.0, 0.5, -1.0]),
        logits=LOGITS,
        boxes_cxcywh=boxes,
        boxes_xyxy=QUERIES,
        image_size=(H, W),
        negative=(False, False),
    )


def test_constructed_case_gives_the_expected_columns():
    rows = table_from_outputs(
        constructed(), GroundTruth(GT, torch.tensor([0, 1])), names=["a", "b"], **DEFAULTS
    )
    expected = []
    for i in range(3):
        costs = [
            hand_cost(LOGITS[i].tolist(), QUERIES[i].tolist(), GT[j].tolist(), j) for j in range(2)
        ]
        j = int(np.argmin([c for c, _ in costs]))
        expected.append((j, costs[j][0], costs[j][1]))
    rewards = np.array([-c for _, c, _ in expected])
    adv = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 2e-9)
    adv[-1] = 0.0  # a third of 3 queries: the lowest-ranked one is muted
    for row, (j, cost, iou), a in zip(rows, expected, adv, strict=True):
        assert row.matched_gt == j
        assert row.cost == pytest.approx(cost, rel=1e-5)
        assert row.reward == pytest.approx(-cost, rel=1e-5)
        assert row.iou == pytest.approx(iou, abs=1e-5)
        assert row.advantage == pytest.approx(a, abs=1e-5)
    assert [r.matched_gt for r in rows[:2]] == [0, 1] and rows[0].iou == pytest.approx(1.0)
    assert rows[1].iou == pytest.approx(0.5)
    assert [r.muted for r in rows] == [False, False, True]
    assert (
        rows[0].extra["hungarian"] and rows[1].extra["hungarian"] and not rows[2].extra["hungarian"]
    )
    assert rows[0].objectness == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert rows[0].prompt_index == 0 and rows[0].extra["name"] == "a"


def test_without_ground_truth_only_scores_are_filled():
    rows = table_from_outputs(constructed(), **DEFAULTS)
    assert all(r.reward is None and r.iou is None and r.matched_gt is None for r in rows)
    assert rows[1].prompt_index == 1 and rows[1].score == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_other_rewards_and_mute_settings_are_honoured():
    truth = GroundTruth(GT, torch.tensor([0, 1]))
    grqo = GRQOConfig(reward="iou_alignment", mute=0)
    rows = table_from_outputs(constructed(), truth, grqo=grqo, loss=LossConfig())
    assert rows[0].reward == pytest.approx(1.0 / (1 + math.exp(-4.0)), rel=1e-5)
    assert not any(r.muted for r in rows)
    assert sum(r.advantage for r in rows) == pytest.approx(0.0, abs=1e-5)


def test_query_table_of_a_real_model_with_a_reference():
    torch.manual_seed(0)
    predictor = Predictor(build_detector("tiny"), min_size=96, max_size=96)
    torch.manual_seed(1)
    other = Predictor(build_detector("tiny"), min_size=96, max_size=96)
    image = (torch.rand(96, 96, 3) * 255).to(torch.uint8).numpy()
    prompts = [VisualPrompt("a", (Exemplar((10, 10, 40, 40)),))]
    truth = GroundTruth(torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([0]))
    same = query_table(predictor, image, prompts, ground_truth=truth, reference=predictor)
    assert all(r.kl == pytest.approx(0.0, abs=1e-6) for r in same)
    drift = query_table(predictor, image, prompts, ground_truth=truth, reference=other)
    assert max(r.kl for r in drift) > 0
    assert [r.token_index for r in same] == [r.token_index for r in drift]
    frame = to_dataframe(drift)
    assert list(frame["rank"]) == list(range(len(drift))) and "cost_giou" in frame.columns
    assert to_records(drift)[0]["name"] == "a"


def test_a_reference_that_tiles_the_image_differently_is_refused():
    torch.manual_seed(0)
    predictor = Predictor(build_detector("tiny"), min_size=96, max_size=96)
    coarser = Predictor(build_detector("tiny"), min_size=64, max_size=64)  # other token grid
    image = (torch.rand(96, 96, 3) * 255).to(torch.uint8).numpy()
    prompts = [VisualPrompt("a", (Exemplar((10, 10, 40, 40)),))]
    with pytest.raises(ValueError, match="tiles the image into different tokens"):
        query_table(predictor, image, prompts, reference=coarser)


def test_the_table_follows_the_settings_the_model_was_trained_with(tmp_path):
    from workbench.model.build import save_pretrained

    torch.manual_seed(0)
    run = load_config(
        None, ["grqo.mute=0", "grqo.reward=iou_alignment", "data.min_size=96", "data.max_size=96"]
    )
    folder = save_pretrained(build_detector("tiny"), tmp_path / "mute0", config=run)
    trained = Predictor.from_checkpoint(folder, device="cpu")
    unknown = Predictor(trained.model, min_size=96, max_size=96)  # no run config: defaults
    image = (torch.rand(96, 96, 3) * 255).to(torch.uint8).numpy()
    prompts = [VisualPrompt("a", (Exemplar((10, 10, 40, 40)),))]
    truth = GroundTruth(torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([0]))
    own = query_table(trained, image, prompts, ground_truth=truth)
    default = query_table(unknown, image, prompts, ground_truth=truth)
    assert trained.run_config == run and not any(r.muted for r in own)
    assert sum(r.muted for r in default) == round(len(default) / 3)
    assert max(r.reward for r in own) <= 1.0 < -min(r.reward for r in default)  # IoU vs cost
