"""Contrastive denoising queries (DINO's CDN), adapted to visual prompts.

In training, noised copies of the ground-truth boxes are fed to the decoder beside the matching
queries. Each group holds every box twice: a *positive* copy, slightly noised, that must be
reconstructed, and a *negative* copy, noised more, that must be rejected ("no object"). Their
labels are noised too (a fraction flips to a random prompt).

DINO embeds a noised label with a class-embedding table; here classes are prompts, which change
from batch to batch, so a denoising query's content is the (enhanced) embedding of its noised
prompt, through a learned projection. Matching queries may not attend to denoising queries, and
groups may not attend to each other, so no answer leaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench import boxes as box_ops
from workbench.types import Target


@dataclass
class DenoisingQueries:
    """Denoising inputs for a batch; ``D = pad_size`` queries per image.

    Attributes:
        labels: ``[B, D]`` int64 noised prompt index of each query (0 on padding slots).
        boxes_cxcywh: ``[B, D, 4]`` noised normalised boxes (the reference points).
        attn_mask: ``[D + Q, D + Q]`` bool, True where attention is forbidden.
        positive_index / positive_target / negative_index: per image, see workbench.model.
    """

    labels: Tensor
    boxes_cxcywh: Tensor
    attn_mask: Tensor
    positive_index: list[Tensor]
    positive_target: list[Tensor]
    negative_index: list[Tensor]
    num_groups: int
    pad_size: int


def build_denoising_queries(
    targets: list[Target],
    num_prompts: int,
    num_queries: int,
    dn_number: int,
    label_noise: float,
    box_noise: float,
) -> DenoisingQueries | None:
    """Noised positive and negative copies of every target box, ``dn_number // (2 * max_boxes)``
    groups of them (at least one). None when no image has a box or ``dn_number`` is 0."""
    counts = [len(t) for t in targets]
    most = max(counts, default=0)
    if most == 0 or dn_number <= 0 or num_prompts == 0:
        return None
    groups = max(1, dn_number // (2 * most))
    pad = 2 * most * groups
    device = targets[0].boxes_cxcywh.device
    labels = torch.zeros(len(targets), pad, dtype=torch.int64, device=device)
    boxes = torch.full((len(targets), pad, 4), 0.5, device=device)
    boxes[..., 2:] = 0.1  # padding slots: a small central box, trained as "no object"
    positive, positive_target, negative = [], [], []
    for b, target in enumerate(targets):
        n = len(target)
        j = torch.arange(n, device=device)
        starts = torch.arange(groups, device=device)[:, None] * 2 * most
        pos, neg = (starts + j).flatten(), (starts + most + j).flatten()
        truth = target.boxes_cxcywh.repeat(groups, 1)
        boxes[b, pos] = _jitter(truth, box_noise, negative=False)
        boxes[b, neg] = _jitter(truth, box_noise, negative=True)
        noised = _flip_labels(target.labels.repeat(groups), label_noise, num_prompts)
        labels[b, pos], labels[b, neg] = noised, noised
        positive.append(pos)
        positive_target.append(j.repeat(groups))
        negative.append(neg)
    return DenoisingQueries(
        labels=labels,
        boxes_cxcywh=boxes,
        attn_mask=_attention_mask(pad, num_queries, groups, most, device),
        positive_index=positive,
        positive_target=positive_target,
        negative_index=negative,
        num_groups=groups,
        pad_size=pad,
    )


def _jitter(boxes_cxcywh: Tensor, scale: float, negative: bool) -> Tensor:
    """Move each corner by up to ``scale`` x half the box size: positives by less than half of
    that range, negatives by more (DINO's CDN), then clip to the image."""
    xyxy = box_ops.cxcywh_to_xyxy(boxes_cxcywh)
    half = torch.cat([boxes_cxcywh[:, 2:], boxes_cxcywh[:, 2:]], -1) / 2
    sign = torch.randint(0, 2, xyxy.shape, device=xyxy.device) * 2.0 - 1.0
    part = torch.rand(xyxy.shape, device=xyxy.device) + (1.0 if negative else 0.0)
    noised = (xyxy + sign * part * half * scale).clamp(0.0, 1.0)
    # keep a minimal size so the inverse sigmoid of the reference stays finite
    noised[:, 2:] = torch.maximum(noised[:, 2:], noised[:, :2] + 1e-3)
    return box_ops.xyxy_to_cxcywh(noised).clamp(1e-4, 1 - 1e-4)


def _flip_labels(labels: Tensor, noise: float, num_prompts: int) -> Tensor:
    """Replace a ``noise / 2`` share of labels by a random prompt (DINO's label noise)."""
    flip = torch.rand(labels.shape, device=labels.device) < noise * 0.5
    random = torch.randint(0, num_prompts, labels.shape, device=labels.device)
    return torch.where(flip, random, labels)


def _attention_mask(pad: int, num_queries: int, groups: int, most: int, device) -> Tensor:
    """True where attention is forbidden: matching -> dn, and dn group -> another dn group."""
    size = pad + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    span = 2 * most
    for g in range(groups):
        lo, hi = g * span, (g + 1) * span
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:pad] = True
    return mask
