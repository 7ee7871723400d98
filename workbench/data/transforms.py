"""Paired image + target transforms: resize with a cap, random flip, box-preserving crop.

Each transform is ``(image [3, H, W] float32, Target) -> (image, Target)``. Targets hold boxes as
normalised cxcywh, which a resize leaves unchanged and a flip only mirrors; only cropping needs
pixels, and it converts through :mod:`workbench.boxes`. Randomness comes from torch's generator,
which the DataLoader seeds per worker and the trainer checkpoints, so augmentation replays exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import DataConfig
from workbench.types import Target

Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def resized_hw(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Shorter side to ``min_size`` unless that pushes the longer side past ``max_size``."""
    short, long = min(height, width), max(height, width)
    scale = min(min_size / short, max_size / long)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Resize:
    """Resize keeping the aspect ratio; in training a shorter side is drawn from ``min_sizes``."""

    def __init__(self, min_sizes: int | Sequence[int], max_size: int):
        self.min_sizes = [min_sizes] if isinstance(min_sizes, int) else list(min_sizes)
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"Resize needs positive sizes, got {min_sizes}, {max_size}")
        self.max_size = max_size

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        i = int(torch.randint(len(self.min_sizes), (1,))) if len(self.min_sizes) > 1 else 0
        h, w = resized_hw(image.shape[-2], image.shape[-1], self.min_sizes[i], self.max_size)
        if (h, w) != tuple(image.shape[-2:]):
            image = F.interpolate(
                image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0, 1)
        return image, dataclasses.replace(target, size=(h, w))

    def __repr__(self) -> str:
        return f"Resize(min_sizes={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if float(torch.rand(())) >= self.p:
            return image, target
        boxes = target.boxes_cxcywh.clone()
        boxes[:, 0] = 1.0 - boxes[:, 0]
        return image.flip(-1), dataclasses.replace(target, boxes_cxcywh=boxes)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Crop a random window of at least ``min_scale`` of each side.

    With ``keep_all_boxes`` (the default) the window contains every box entirely, so no object is
    cut: a cut exemplar would teach the prompt encoder a different object. Otherwise boxes are
    clipped to the window and those keeping less than ``min_visible`` of their area are dropped.
    """

    def __init__(
        self,
        p: float = 0.5,
        min_scale: float = 0.5,
        keep_all_boxes: bool = True,
        min_visible: float = 0.5,
    ):
        if not 0 < min_scale <= 1:
            raise ValueError(f"RandomCrop.min_scale must lie in (0, 1], got {min_scale}")
        self.p, self.min_scale = p, min_scale
        self.keep_all_boxes, self.min_visible = keep_all_boxes, min_visible

    def _window(self, h: int, w: int, boxes_xyxy: Tensor) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a window, containing every box when asked to."""
        lo_h, lo_w = max(1, int(self.min_scale * h)), max(1, int(self.min_scale * w))
        if self.keep_all_boxes and len(boxes_xyxy):
            ux0, uy0 = boxes_xyxy[:, :2].min(0).values.floor().clamp(min=0).tolist()
            ux1, uy1 = boxes_xyxy[:, 2:].max(0).values.ceil().tolist()
            ux1, uy1 = min(ux1, w), min(uy1, h)
            lo_w, lo_h = max(lo_w, int(ux1 - ux0)), max(lo_h, int(uy1 - uy0))
        ch = int(torch.randint(lo_h, h + 1, (1,)))
        cw = int(torch.randint(lo_w, w + 1, (1,)))
        if self.keep_all_boxes and len(boxes_xyxy):
            top_lo, top_hi = max(0, int(uy1) - ch), min(int(uy0), h - ch)
            left_lo, left_hi = max(0, int(ux1) - cw), min(int(ux0), w - cw)
        else:
            top_lo, top_hi, left_lo, left_hi = 0, h - ch, 0, w - cw
        top = int(torch.randint(top_lo, top_hi + 1, (1,)))
        left = int(torch.randint(left_lo, left_hi + 1, (1,)))
        return top, left, ch, cw

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if float(torch.rand(())) >= self.p:
            return image, target
        h, w = image.shape[-2:]
        boxes = target.boxes_xyxy((h, w))
        top, left, ch, cw = self._window(h, w, boxes)
        shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        clipped = box_ops.clip_xyxy(shifted, (ch, cw))
        visible = box_ops.box_area(clipped) / box_ops.box_area(boxes).clamp(min=1e-6)
        keep = (box_ops.box_area(clipped) > 0) & (visible >= self.min_visible)
        kept = target.select(keep)
        cropped = dataclasses.replace(
            kept,
            boxes_cxcywh=box_ops.convert(
                clipped[keep], "xyxy", "cxcywh", dst_normalized=True, size_hw=(ch, cw)
            ),
            size=(ch, cw),
        )
        return image[:, top : top + ch, left : left + cw], cropped

    def __repr__(self) -> str:
        return f"RandomCrop(p={self.p}, min_scale={self.min_scale}, keep_all={self.keep_all_boxes})"


def train_transforms(cfg: DataConfig) -> Compose:
    """Flip, optional box-preserving crop, then (multi-scale) resize."""
    steps: list[Transform] = []
    if cfg.hflip_prob > 0:
        steps.append(RandomHorizontalFlip(cfg.hflip_prob))
    if cfg.crop_prob > 0:
        steps.append(RandomCrop(p=cfg.crop_prob))
    steps.append(Resize(list(cfg.train_scales) or cfg.min_size, cfg.max_size))
    return Compose(steps)


def eval_transforms(cfg: DataConfig) -> Compose:
    return Compose([Resize(cfg.min_size, cfg.max_size)])
