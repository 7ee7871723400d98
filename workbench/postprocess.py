"""From raw model outputs to what users see: DINO-R1 post-processing and box conversion.

Post-processing (docs/method.md#evaluation-protocols): sigmoid scores ``[Q, U]``, the top K (300)
over all (query, prompt) pairs, no NMS. Negative prompts take part in the forward (query selection
and the decoder see them) and in the top-K, then are removed: their own pairs are dropped, and so is
every pair of a query whose highest score is on a negative prompt ("claimed": that object is the
kind the user said they do not want). A result therefore holds at most K boxes.

Shown results (app, ``workbench predict``, the app's exports) go one step further: detections
below :data:`SCORE_THRESHOLD` are hidden, and duplicates are merged (:func:`merge_duplicates`).
Several queries often find one object (the decoder is trained one-to-one, yet nearby queries keep
near-identical boxes), so without merging each object shows as 3-8 stacked boxes and counts
count queries, not objects. Evaluation (AP) reads the raw top K, as the paper does.

Boxes: the model gives normalised cxcywh of the resized, unpadded image. The resize maps the whole
original image onto the whole resized image, so a fraction of one is the same fraction of the
other: absolute xyxy pixels = fraction x original (width, height), then clipped to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench import boxes as box_ops
from workbench.inputs import InputError
from workbench.types import Detections

# The score a detection needs to be shown (app, `workbench predict`, FiftyOne export). Measured
# on the default models: true detections score 0.2-0.45, false ones mostly below 0.2. The
# Predictor itself returns every top-K detection unless told otherwise (AP needs them all).
SCORE_THRESHOLD = 0.2
# Two shown boxes of one class overlapping more than this are one object: the lower-scoring one
# is merged into the other. 0.5 is the IoU at which COCO counts a box as finding an object.
MERGE_IOU = 0.5


@dataclass(frozen=True)
class QueryOutputs:
    """Every decoder query of one image, for the per-query analysis table (``Q`` queries).

    Attributes:
        token_index: ``[Q]`` int64 encoder token each query was selected from (query order =
            descending ``select_logits``).
        select_logits: ``[Q]`` max-over-prompts encoder logit that selected it; its sigmoid is
            the objectness GRQO's KL regularises.
        logits: ``[Q, U]`` raw class logits of the last decoder layer (negatives included).
        boxes_cxcywh: ``[Q, 4]`` the model's boxes, normalised to the resized unpadded image.
        boxes_xyxy: ``[Q, 4]`` the same boxes in absolute pixels of the original image, clipped.
        image_size: ``(height, width)`` of the original image.
        negative: ``U`` negative-prompt flags.
    """

    token_index: Tensor
    select_logits: Tensor
    logits: Tensor
    boxes_cxcywh: Tensor
    boxes_xyxy: Tensor
    image_size: tuple[int, int]
    negative: tuple[bool, ...]

    @property
    def scores(self) -> Tensor:
        """``[Q, U]`` sigmoid class scores."""
        return self.logits.sigmoid()

    @property
    def max_scores(self) -> Tensor:
        """``[Q]`` each query's best score over the prompts."""
        return self.scores.max(-1).values

    @property
    def best_prompt(self) -> Tensor:
        """``[Q]`` int64 the prompt of each query's best score."""
        return self.logits.argmax(-1)


def boxes_to_pixels(boxes_cxcywh: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Model boxes ``[..., 4]`` (cxcywh, fractions of the resized unpadded image) -> absolute
    xyxy pixels of the original ``(height, width)`` image, clipped to it."""
    xyxy = box_ops.convert(boxes_cxcywh, "cxcywh", "xyxy", src_normalized=True, size_hw=image_size)
    return box_ops.clip_xyxy(xyxy, image_size)


def detections_from_outputs(
    logits: Tensor,
    boxes_cxcywh: Tensor,
    image_size: tuple[int, int],
    names: Sequence[str],
    negative: Sequence[bool],
    *,
    max_detections: int = 300,
    score_threshold: float = 0.0,
) -> Detections:
    """DINO-R1 post-processing of one image (see the module docstring); tensors may live on any
    device, the result is on the CPU.

    Args:
        logits: ``[Q, U]`` raw class logits; boxes_cxcywh: ``[Q, 4]`` normalised model boxes.
        image_size: ``(height, width)`` of the original image.
        names, negative: per prompt (``U`` each).
        max_detections: K of the top-K over the ``Q x U`` pairs.
        score_threshold: keep pairs scoring at least this (after the top-K).
    """
    scores = logits.float().sigmoid()
    u = scores.shape[1]
    top, flat = scores.flatten().topk(min(max_detections, scores.numel()))
    query, prompt = flat // u, flat % u
    is_negative = torch.tensor(list(negative), dtype=torch.bool, device=scores.device)
    keep = (top >= score_threshold) & ~is_negative[prompt]
    if bool(is_negative.any()):
        claimed = is_negative[scores.argmax(1)]  # [Q] best prompt is a negative one
        keep &= ~claimed[query]
    query, prompt = query[keep], prompt[keep]
    return Detections(
        boxes_xyxy=boxes_to_pixels(boxes_cxcywh.float()[query], image_size).cpu(),
        scores=top[keep].cpu(),
        prompt_index=prompt.cpu(),
        names=tuple(names[int(p)] for p in prompt.tolist()),
        image_size=tuple(image_size),
        query_index=query.cpu(),
    )


def merge_duplicates(dets: Detections, iou: float = MERGE_IOU) -> Detections:
    """One box per object: class-wise greedy non-maximum suppression. Best score first, a
    detection is dropped when it overlaps a kept detection of the same prompt with IoU > ``iou``
    (so ``iou=1`` keeps everything). The result keeps ``dets``' order (best first)."""
    if len(dets) < 2 or iou >= 1.0:
        return dets
    order = torch.argsort(dets.scores, descending=True, stable=True)
    overlap = box_ops.box_iou(dets.boxes_xyxy[order], dets.boxes_xyxy[order])
    prompts = dets.prompt_index[order]
    duplicate = (overlap > iou) & (prompts[:, None] == prompts[None, :])
    kept = torch.ones(len(dets), dtype=torch.bool)
    for i in range(len(dets)):
        if kept[i]:
            kept[i + 1 :] &= ~duplicate[i, i + 1 :]
    return dets.select(order[kept].sort().values)


def shown_detections(
    dets: Detections, score_threshold: float = SCORE_THRESHOLD, merge_iou: float | None = MERGE_IOU
) -> Detections:
    """What users see of raw detections: those scoring at least ``score_threshold``, with
    duplicates merged at ``merge_iou`` (None: every raw box). Thresholding and merging commute
    (a detection can only merge into a better-scoring one), so re-thresholding a merged result
    equals merging the re-thresholded one."""
    dets = dets.select(dets.scores >= score_threshold)
    return dets if merge_iou is None else merge_duplicates(dets, merge_iou)


def check_score_threshold(threshold: float) -> float:
    """The threshold as a float in [0, 1], or an InputError."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"score_threshold must lie in [0, 1], got {threshold}")
    return float(threshold)
