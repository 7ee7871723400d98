"""Box formats, IoU and GIoU: the only module that knows how boxes are written.

Formats (every function works on the last dimension, size 4, of a float tensor of any batch shape):

- ``xyxy``   (x0, y0, x1, y1): corners; used at the Predictor and above, in absolute pixels.
- ``cxcywh`` (cx, cy, w, h): centre and size; used inside the model, matcher and losses, normalised
  to [0, 1] by the image width and height.
- ``xywh``   (x0, y0, w, h): top-left and size; COCO json (absolute) and FiftyOne (normalised).

``normalize`` / ``denormalize`` divide / multiply x by the image width and y by its height and work
for all three formats, because each coordinate is either an x-like or a y-like quantity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FORMATS = ("xyxy", "cxcywh", "xywh")

# Guards divisions by the union / enclosing area. Far below any real box area (a 1-pixel box in a
# 10k-pixel-wide image has normalised area 1e-8), so it changes no real IoU.
_EPS = 1e-12


def _as_float(boxes: Tensor | Sequence) -> Tensor:
    boxes = torch.as_tensor(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes must have a last dimension of size 4, got shape {tuple(boxes.shape)}"
        )
    return boxes


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = _as_float(boxes).unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = _as_float(boxes).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = _as_float(boxes).unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x0, y0, w, h = _as_float(boxes).unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def cxcywh_to_xywh(boxes: Tensor) -> Tensor:
    cx, cy, w, h = _as_float(boxes).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1)


def xywh_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, w, h = _as_float(boxes).unbind(-1)
    return torch.stack([x0 + w / 2, y0 + h / 2, w, h], dim=-1)


_CONVERTERS = {
    ("xyxy", "cxcywh"): xyxy_to_cxcywh,
    ("cxcywh", "xyxy"): cxcywh_to_xyxy,
    ("xyxy", "xywh"): xyxy_to_xywh,
    ("xywh", "xyxy"): xywh_to_xyxy,
    ("cxcywh", "xywh"): cxcywh_to_xywh,
    ("xywh", "cxcywh"): xywh_to_cxcywh,
}


def _scale(size_hw: Sequence[float], like: Tensor) -> Tensor:
    h, w = (float(s) for s in size_hw)
    if not (h > 0 and w > 0):
        raise ValueError(f"image size (height, width) must be positive, got {tuple(size_hw)}")
    return torch.tensor([w, h, w, h], dtype=like.dtype, device=like.device)


def normalize(boxes: Tensor, size_hw: Sequence[float]) -> Tensor:
    """Absolute pixels -> [0, 1] fractions of the image (any of the three formats)."""
    boxes = _as_float(boxes)
    return boxes / _scale(size_hw, boxes)


def denormalize(boxes: Tensor, size_hw: Sequence[float]) -> Tensor:
    """[0, 1] fractions of the image -> absolute pixels (any of the three formats)."""
    boxes = _as_float(boxes)
    return boxes * _scale(size_hw, boxes)


def convert(
    boxes: Tensor | Sequence,
    src: str,
    dst: str,
    *,
    src_normalized: bool = False,
    dst_normalized: bool = False,
    size_hw: Sequence[float] | None = None,
) -> Tensor:
    """Convert boxes between formats and between absolute and normalised coordinates.

    Args:
        boxes: float tensor ``[..., 4]`` in format ``src``.
        src, dst: one of ``"xyxy"``, ``"cxcywh"``, ``"xywh"``.
        src_normalized, dst_normalized: whether the input / output are fractions of the image.
        size_hw: image ``(height, width)`` in pixels; needed when normalisation changes.
    """
    for name, fmt in (("src", src), ("dst", dst)):
        if fmt not in FORMATS:
            raise ValueError(f"{name}={fmt!r} is not a box format; use one of {FORMATS}")
    boxes = _as_float(boxes)
    if src != dst:
        boxes = _CONVERTERS[(src, dst)](boxes)
    if src_normalized != dst_normalized:
        if size_hw is None:
            raise ValueError("size_hw=(height, width) is needed to change normalisation")
        boxes = denormalize(boxes, size_hw) if src_normalized else normalize(boxes, size_hw)
    return boxes


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes; inverted boxes count as 0."""
    b = _as_float(boxes_xyxy)
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def clip_xyxy(boxes_xyxy: Tensor, size_hw: Sequence[float]) -> Tensor:
    """Clip absolute xyxy boxes to the image ``[0, width] x [0, height]``."""
    h, w = (float(s) for s in size_hw)
    b = _as_float(boxes_xyxy)
    x = b[..., 0::2].clamp(0, w)
    y = b[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union of xyxy boxes that broadcast against each other."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    return inter, union


def _giou_from(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=_EPS)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    # GIoU = IoU - (hull - union) / hull; in [-1, 1], equal to IoU when the boxes fill their hull.
    giou = iou - (hull - union) / hull.clamp(min=_EPS)
    return iou, giou


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise IoU: ``[N, 4]`` x ``[M, 4]`` xyxy -> ``[N, M]``. Degenerate pairs give 0."""
    a, b = _as_float(boxes1_xyxy), _as_float(boxes2_xyxy)
    inter, union = _inter_union(a[:, None, :], b[None, :, :])
    return inter / union.clamp(min=_EPS)


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019): ``[N, 4]`` x ``[M, 4]`` xyxy -> ``[N, M]``.

    Differentiable; used as a matching cost and a loss, so it is kept in the autograd graph.
    """
    a, b = _as_float(boxes1_xyxy), _as_float(boxes2_xyxy)
    return _giou_from(a[:, None, :], b[None, :, :])[1]


def elementwise_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """IoU of matching pairs: ``[..., 4]`` and ``[..., 4]`` xyxy -> ``[...]``."""
    a, b = _as_float(boxes1_xyxy), _as_float(boxes2_xyxy)
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=_EPS)


def elementwise_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """GIoU of matching pairs: ``[..., 4]`` and ``[..., 4]`` xyxy -> ``[...]``."""
    return _giou_from(_as_float(boxes1_xyxy), _as_float(boxes2_xyxy))[1]
