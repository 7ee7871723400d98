"""Hungarian matching of decoder queries to ground-truth boxes (DETR's matcher, DINO's costs).

The pairwise cost between query ``i`` and ground-truth box ``j`` is
(docs/method.md#grqo-reward-advantage-and-mute, mmdet's
``HungarianAssigner`` with the Grounding-DINO costs)::

    C(i, j) = cost_class * C_cls(i, j) + cost_bbox * ||b_i - b_j||_1 + cost_giou * (-GIoU(b_i, b_j))

with boxes normalised cxcywh and ``C_cls`` mmdet's ``BinaryFocalLossCost``: the binary focal loss
of the query's sigmoid scores over *all* U prompts against the box's one-hot prompt target, so a
query is cheap for box ``j`` when it scores ``j``'s prompt high *and* the other prompts low.

:func:`pairwise_cost` keeps the autograd graph, because GRQO's per-query reward is
``-min_j C(i, j)`` and its gradient flows through it. :class:`HungarianMatcher` is stateless, runs
under ``torch.no_grad()`` and only returns indices: the losses never see the cost.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.types import Target

# mmdet's BinaryFocalLossCost eps: bounds -log(p) at ~27.6 when a sigmoid saturates to 0 or 1, so
# the cost of a hopeless query is large but finite and its gradient stays finite.
_LOG_EPS = 1e-12

COST_TERMS = ("cost_class", "cost_bbox", "cost_giou")


def _check_pairwise_inputs(
    pred_logits: Tensor, pred_boxes: Tensor, target_labels: Tensor, target_boxes: Tensor
) -> None:
    q, u = pred_logits.shape if pred_logits.ndim == 2 else (-1, -1)
    n = int(target_labels.shape[0]) if target_labels.ndim == 1 else -1
    if q < 0 or tuple(pred_boxes.shape) != (q, 4):
        raise ValueError(
            "pred_logits must be [Q, U] and pred_boxes [Q, 4], got "
            f"{tuple(pred_logits.shape)} and {tuple(pred_boxes.shape)}"
        )
    if n < 0 or tuple(target_boxes.shape) != (n, 4):
        raise ValueError(
            "target_labels must be [N] and target_boxes [N, 4], got "
            f"{tuple(target_labels.shape)} and {tuple(target_boxes.shape)}"
        )
    if n and (int(target_labels.min()) < 0 or int(target_labels.max()) >= u):
        raise ValueError(
            f"target labels must be prompt indices in [0, {u}) for U={u} prompts, got "
            f"{sorted(set(target_labels.tolist()))}; relabel targets with "
            "workbench.data.prompts.assign_targets(targets, prompt_set.labels)"
        )


def pairwise_cost_terms(
    pred_logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    target_labels: Tensor,
    target_boxes_cxcywh: Tensor,
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """The three unweighted matching costs, each ``[Q, N]`` float32, differentiable.

    Args:
        pred_logits: ``[Q, U]`` raw class logits of Q queries over U prompts.
        pred_boxes_cxcywh: ``[Q, 4]`` predicted boxes, normalised cxcywh.
        target_labels: ``[N]`` int64 prompt index of each ground-truth box, in ``[0, U)``.
        target_boxes_cxcywh: ``[N, 4]`` ground-truth boxes, normalised cxcywh.
        cfg: supplies the focal ``focal_alpha`` and ``focal_gamma`` (shared with the loss).

    Returns:
        ``{"cost_class": C_cls, "cost_bbox": L1, "cost_giou": -GIoU}``; keys are the
        :class:`LossConfig` fields that weight them. Computed in float32 with autocast off.
    """
    _check_pairwise_inputs(pred_logits, pred_boxes_cxcywh, target_labels, target_boxes_cxcywh)
    with torch.autocast(device_type=pred_logits.device.type, enabled=False):
        logits, boxes = pred_logits.float(), pred_boxes_cxcywh.float()
        tgt_boxes = target_boxes_cxcywh.to(boxes)
        return {
            "cost_class": _binary_focal_cost(
                logits, target_labels, cfg.focal_alpha, cfg.focal_gamma
            ),
            "cost_bbox": torch.cdist(boxes, tgt_boxes, p=1),
            "cost_giou": -box_ops.generalized_box_iou(
                box_ops.cxcywh_to_xyxy(boxes), box_ops.cxcywh_to_xyxy(tgt_boxes)
            ),
        }


def _binary_focal_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """mmdet's BinaryFocalLossCost ``[Q, U] x [N] -> [Q, N]`` (DINO-R1: α = 0.25, γ = 2)."""
    p = logits.sigmoid()
    pos = alpha * (1 - p).pow(gamma) * -(p + _LOG_EPS).log()  # prompt c is the box's: want p = 1
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + _LOG_EPS).log()  # it is not: want p = 0
    # With one-hot rows y_j (label l_j), Σ_c [y_jc pos_ic + (1 - y_jc) neg_ic] equals
    # Σ_c neg_ic + (pos - neg)_{i, l_j}: the einsum of the formula, computed by gathering the
    # label column instead of multiplying by a [N, U] one-hot (same value and gradient, O(QN)).
    return neg.sum(dim=1, keepdim=True) + (pos - neg)[:, labels]


def pairwise_cost(
    pred_logits: Tensor,
    pred_boxes_cxcywh: Tensor,
    target_labels: Tensor,
    target_boxes_cxcywh: Tensor,
    cfg: LossConfig,
) -> Tensor:
    """Weighted matching cost ``[Q, N]`` float32, differentiable (GRQO's reward is ``-min_j``).

    ``cfg.cost_class * C_cls + cfg.cost_bbox * L1 + cfg.cost_giou * (-GIoU)``; shapes and box
    convention as in :func:`pairwise_cost_terms`.
    """
    terms = pairwise_cost_terms(
        pred_logits, pred_boxes_cxcywh, target_labels, target_boxes_cxcywh, cfg
    )
    return sum(getattr(cfg, name) * terms[name] for name in COST_TERMS)


class HungarianMatcher:
    """One-to-one assignment of queries to ground-truth boxes minimising :func:`pairwise_cost`.

    Stateless and gradient-free. Every box it is given is matched; callers drop crowd regions
    first (``losses.drop_crowd``). An image with N boxes and Q queries gets ``min(Q, N)`` pairs.
    A NaN or infinite cost raises ``FloatingPointError`` naming the image and the offending
    input rather than being sanitised: a non-finite prediction means the model has diverged, and
    an assignment made from replaced values would silently train on garbage.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    @torch.no_grad()
    def __call__(
        self, outputs: Mapping[str, Tensor], targets: list[Target]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits [B, Q, U]`` raw logits and ``pred_boxes [B, Q, 4]``
                normalised cxcywh (other keys are ignored).
            targets: B targets whose labels are prompt indices in ``[0, U)``.

        Returns:
            Per image, ``(query_index, target_index)``: two int64 CPU tensors of equal length
            ``min(Q, N_b)``, sorted by query index.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bsz, num_queries = logits.shape[:2]
        if len(targets) != bsz:
            raise ValueError(f"got {len(targets)} targets for a batch of {bsz} images")
        # DETR's batching: one cost matrix of every query of the batch against every box of the
        # batch, then each image's diagonal block goes to scipy. Off-diagonal blocks are wasted
        # work, but one large kernel beats B small ones on a GPU.
        cost = pairwise_cost(
            logits.flatten(0, 1),
            boxes.flatten(0, 1),
            torch.cat([t.labels for t in targets]).to(logits.device),
            torch.cat([t.boxes_cxcywh for t in targets]).to(boxes.device),
            self.cfg,
        )
        sizes = [len(t) for t in targets]
        cost = cost.view(bsz, num_queries, sum(sizes)).cpu()
        indices = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            block = block[b]
            if not torch.isfinite(block).all():
                raise FloatingPointError(_non_finite_message(b, outputs, targets[b]))
            rows, cols = linear_sum_assignment(block.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices


def _non_finite_message(b: int, outputs: Mapping[str, Tensor], target: Target) -> str:
    counts = {
        "pred_logits": int((~torch.isfinite(outputs["pred_logits"][b])).sum()),
        "pred_boxes": int((~torch.isfinite(outputs["pred_boxes"][b])).sum()),
        "target boxes_cxcywh": int((~torch.isfinite(target.boxes_cxcywh)).sum()),
    }
    bad = ", ".join(f"{name} has {n} non-finite values" for name, n in counts.items() if n)
    return (
        f"matching cost of image {b} (image_id {target.image_id}) is NaN or infinite: "
        f"{bad or 'the cost overflowed'}. The model's outputs have diverged; lower the learning "
        "rate, keep clip_grad_norm on, or train without AMP to find where it starts."
    )
