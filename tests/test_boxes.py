import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import boxes as B

coord = st.floats(min_value=-500, max_value=500, allow_nan=False, width=32)
size = st.floats(min_value=0.5, max_value=400, allow_nan=False, width=32)


@st.composite
def xyxy(draw, n=None):
    count = draw(st.integers(1, 6)) if n is None else n
    rows = []
    for _ in range(count):
        x0, y0, w, h = draw(coord), draw(coord), draw(size), draw(size)
        rows.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(rows, dtype=torch.float64)


@given(xyxy())
def test_every_format_round_trips(boxes):
    for fmt in ("cxcywh", "xywh"):
        there = B.convert(boxes, "xyxy", fmt)
        back = B.convert(there, fmt, "xyxy")
        torch.testing.assert_close(back, boxes, rtol=0, atol=1e-9)
    chain = B.convert(
        B.convert(B.convert(boxes, "xyxy", "cxcywh"), "cxcywh", "xywh"), "xywh", "xyxy"
    )
    torch.testing.assert_close(chain, boxes, rtol=0, atol=1e-9)


@given(xyxy(), st.integers(1, 4000), st.integers(1, 4000))
def test_normalisation_round_trips_in_every_format(boxes, h, w):
    for fmt in B.FORMATS:
        src = B.convert(boxes, "xyxy", fmt)
        norm = B.convert(src, fmt, "cxcywh", dst_normalized=True, size_hw=(h, w))
        back = B.convert(norm, "cxcywh", fmt, src_normalized=True, size_hw=(h, w))
        torch.testing.assert_close(back, src, rtol=1e-9, atol=1e-9)


def test_known_conversions():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert B.xyxy_to_cxcywh(box).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert B.xyxy_to_xywh(box).tolist() == [[10.0, 20.0, 20.0, 40.0]]
    norm = B.convert(box, "xyxy", "cxcywh", dst_normalized=True, size_hw=(100, 200))
    torch.testing.assert_close(norm, torch.tensor([[0.1, 0.4, 0.1, 0.4]]))


@given(xyxy(), xyxy())
def test_giou_at_most_iou_and_both_symmetric(a, b):
    iou, giou = B.box_iou(a, b), B.generalized_box_iou(a, b)
    assert torch.all(giou <= iou + 1e-9)
    assert torch.all((iou >= 0) & (iou <= 1 + 1e-9))
    assert torch.all((giou >= -1 - 1e-9) & (giou <= 1 + 1e-9))
    torch.testing.assert_close(B.box_iou(b, a), iou.T)
    torch.testing.assert_close(B.generalized_box_iou(b, a), giou.T)


@given(xyxy())
def test_identical_boxes_give_one(boxes):
    torch.testing.assert_close(
        B.elementwise_box_iou(boxes, boxes), torch.ones(len(boxes), dtype=boxes.dtype)
    )
    torch.testing.assert_close(
        B.elementwise_generalized_box_iou(boxes, boxes), torch.ones(len(boxes), dtype=boxes.dtype)
    )
    torch.testing.assert_close(
        B.box_iou(boxes, boxes).diagonal(), torch.ones(len(boxes), dtype=boxes.dtype)
    )


@given(xyxy(n=1), st.floats(0.01, 300), st.floats(-300, 300))
def test_disjoint_boxes_have_negative_giou(box, gap, shift):
    w = box[0, 2] - box[0, 0]
    other = box.clone()
    other[0, [0, 2]] += w + gap  # entirely to the right, with a gap
    other[0, [1, 3]] += shift
    assert B.box_iou(box, other).item() == 0
    assert B.generalized_box_iou(box, other).item() < 0


@settings(max_examples=50)
@given(xyxy(), xyxy())
def test_elementwise_matches_pairwise_diagonal(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    torch.testing.assert_close(B.elementwise_box_iou(a, b), B.box_iou(a, b).diagonal())
    torch.testing.assert_close(
        B.elementwise_generalized_box_iou(a, b), B.generalized_box_iou(a, b).diagonal()
    )


def test_known_iou_and_giou_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert math.isclose(B.box_iou(a, b).item(), 1 / 7, rel_tol=1e-6)
    # hull 3x3 = 9, union 7: giou = 1/7 - 2/9
    assert math.isclose(B.generalized_box_iou(a, b).item(), 1 / 7 - 2 / 9, rel_tol=1e-6)


def test_giou_is_differentiable_and_finite_for_degenerate_boxes():
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 3.0, 3.0]])
    out = B.generalized_box_iou(a, b)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_clip_and_area():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 120.0], [10.0, 10.0, 5.0, 20.0]])
    assert B.clip_xyxy(boxes, (100, 40)).tolist()[0] == [0.0, 0.0, 40.0, 100.0]
    assert B.box_area(boxes).tolist() == [55.0 * 125.0, 0.0]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="last dimension of size 4"):
        B.xyxy_to_cxcywh(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="not a box format"):
        B.convert(torch.zeros(1, 4), "xyxy", "yolo")
    with pytest.raises(ValueError, match="size_hw"):
        B.convert(torch.zeros(1, 4), "xyxy", "xyxy", dst_normalized=True)
    with pytest.raises(ValueError, match="must be positive"):
        B.normalize(torch.zeros(1, 4), (0, 10))
