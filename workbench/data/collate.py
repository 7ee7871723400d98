"""Batching: pad images of different sizes to one tensor and record which pixels are real."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from workbench.types import Batch, Target


def pad_images(images: Sequence[Tensor], size_divisor: int = 32) -> tuple[Tensor, Tensor]:
    """Zero-pad ``[3, H_i, W_i]`` images at the bottom and right to a common size.

    The common size is the largest height and width, rounded up to a multiple of
    ``size_divisor`` (the backbone's largest stride, so feature maps line up with the mask).

    Returns:
        ``images [B, 3, H, W]`` float32 and ``pixel_mask [B, H, W]`` bool, True on real pixels.
    """
    if not images:
        raise ValueError("cannot batch zero images")
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    if size_divisor > 1:
        h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    out = images[0].new_zeros((len(images), 3, h, w))
    mask = torch.zeros((len(images), h, w), dtype=torch.bool, device=images[0].device)
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} must be [3, H, W], got {tuple(im.shape)}")
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
        mask[i, : im.shape[-2], : im.shape[-1]] = True
    return out, mask


def collate(samples: Sequence[tuple[Tensor, Target]], size_divisor: int = 32) -> Batch:
    """``DataLoader`` collate function: a list of ``(image, Target)`` -> :class:`Batch`.

    Boxes stay normalised by each image's own (unpadded) size, as in DETR; the model accounts
    for padding through ``pixel_mask``. Prompts are sampled later, from a seeded generator.
    """
    images, mask = pad_images([s[0] for s in samples], size_divisor)
    return Batch(images=images, pixel_mask=mask, targets=[s[1] for s in samples])
