"""Shown detections: the score threshold and duplicate merging (class-wise NMS) that the app,
`workbench predict` and the app's exports apply to the raw top-K."""

from __future__ import annotations

import itertools

import pytest
import torch

from workbench import boxes as box_ops
from workbench.postprocess import MERGE_IOU, merge_duplicates, shown_detections
from workbench.types import Detections


def detections(boxes, scores, prompts) -> Detections:
    prompts = torch.tensor(prompts)
    return Detections(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores),
        prompts,
        tuple(f"class{p}" for p in prompts.tolist()),
        (100, 100),
        torch.arange(len(scores)),
    )


def test_overlapping_boxes_of_one_class_merge_into_the_best_scoring_one():
    dets = detections(
        [[10, 10, 50, 50], [12, 11, 51, 50], [10, 10, 50, 50], [60, 60, 90, 90], [11, 10, 50, 52]],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [0, 0, 1, 0, 0],
    )
    merged = merge_duplicates(dets)
    # the two near-copies of box 0 go; the same box of another class and a distant box stay
    assert merged.query_index.tolist() == [0, 2, 3]
    assert merged.names == ("class0", "class1", "class0")
    assert merge_duplicates(dets, iou=1.0).query_index.tolist() == [0, 1, 2, 3, 4]


def test_a_box_suppressed_by_a_dropped_box_survives():
    # greedy order: B overlaps A (dropped), C overlaps B but not A, so C is kept
    a, b, c = [0, 0, 40, 40], [10, 0, 50, 40], [22, 0, 62, 40]
    ious = box_ops.box_iou(torch.tensor([a, b, c], dtype=torch.float32), torch.tensor([a, b, c]))
    assert ious[0, 1] > MERGE_IOU and ious[1, 2] > MERGE_IOU and ious[0, 2] < MERGE_IOU
    merged = merge_duplicates(detections([a, b, c], [0.9, 0.8, 0.7], [0, 0, 0]))
    assert merged.query_index.tolist() == [0, 2]


@pytest.mark.parametrize("seed", range(5))
def test_no_shown_pair_of_one_class_overlaps_above_the_merge_iou(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(60, 2, generator=g) * 70
    wh = 10 + torch.rand(60, 2, generator=g) * 20
    dets = detections(
        torch.cat([xy, xy + wh], 1).tolist(),
        torch.rand(60, generator=g).tolist(),
        torch.randint(0, 3, (60,), generator=g).tolist(),
    )
    for threshold in (0.0, 0.3, 0.6):
        shown = shown_detections(dets, threshold)
        assert bool((shown.scores >= threshold).all())
        iou = box_ops.box_iou(shown.boxes_xyxy, shown.boxes_xyxy)
        for i, j in itertools.combinations(range(len(shown)), 2):
            if shown.prompt_index[i] == shown.prompt_index[j]:
                assert iou[i, j] <= MERGE_IOU
        # thresholding and merging commute, so re-thresholding a merged result is exact
        merged_first = shown_detections(shown_detections(dets, 0.0), threshold)
        assert merged_first.query_index.tolist() == shown.query_index.tolist()
    assert len(shown_detections(dets, 0.0, None)) == len(dets)
