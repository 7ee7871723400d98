"""Set losses of the detector, returned unweighted and by name (DETR's ``SetCriterion``).

Terms, each a scalar normalised by the number of ground-truth boxes (see ``num_boxes`` below):

- ``loss_class``: sigmoid focal loss over all ``Q x U`` logits, target 1 at each matched
  (query, prompt of its box) pair and 0 everywhere else;
- ``loss_bbox``: L1 between matched normalised cxcywh boxes;
- ``loss_giou``: ``1 - GIoU`` of matched boxes.

Keys: no suffix for the last decoder layer, ``_{i}`` for ``aux_outputs[i]`` (``cfg.aux_loss``),
``_enc`` for the encoder proposals (``cfg.enc_loss``, matched on their own, as DINO does) and
``_dn_{l}`` for the denoising queries of decoder layer ``l`` (``cfg.dn_loss``; no matching, the
model says which dn query rebuilds which box). Keys without the ``loss_`` prefix are diagnostics
(``cardinality_error``, ``matched_iou``), never weighted. :func:`weighted_loss` is the one place
where weights apply.

Normalisation (Deformable DETR): ``loss_class = focal.sum() / num_boxes``, the sum running over
every query and prompt, which is Deformable DETR's ``focal.mean(1).sum() / num_boxes * Q``.
Denoising terms divide by ``num_boxes * num_groups`` (DN-DETR), each group rebuilding every box.
``num_boxes`` counts the batch's non-crowd boxes, all-reduced and divided by the world size under
torch.distributed, then clamped to at least 1 (DETR). Crowd regions are dropped before matching,
as DETR drops them in its dataset: a query on a crowd region is taught "nothing here".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.types import Target

LOSS_TERMS = ("loss_class", "loss_bbox", "loss_giou")

# What the criterion needs of a matcher: workbench.matching.HungarianMatcher, or any callable
# with its signature (outputs, targets) -> per image (query_index, target_index).
Matcher = Callable[[Mapping[str, Tensor], list[Target]], list[tuple[Tensor, Tensor]]]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise sigmoid focal loss (Lin et al. 2017), no reduction; same shape as ``logits``.

    ``FL = α_t (1 - p_t)^γ BCE(logits, targets)`` with ``p_t = p`` where the target is 1 and
    ``1 - p`` where it is 0, ``α_t`` likewise ``α`` / ``1 - α``. ``alpha < 0`` turns α off.
    BCE from logits keeps ``-log p`` exact where the sigmoid saturates.
    """
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def drop_crowd(targets: list[Target]) -> list[Target]:
    """The targets without their crowd regions (``iscrowd``), in the same order."""
    return [t.select(~t.iscrowd) if bool(t.iscrowd.any()) else t for t in targets]


def count_boxes(targets: list[Target]) -> int:
    """Non-crowd ground-truth boxes in ``targets``: the loss normaliser of one process."""
    return sum(int((~t.iscrowd).sum()) for t in targets)


def global_num_boxes(local_count: float, device: torch.device | str = "cpu") -> float:
    """DETR's normaliser: mean over processes of each one's box count, clamped to >= 1.

    Without torch.distributed this is ``max(local_count, 1)``. Under DDP, whose gradients are
    the mean over processes, dividing every process's summed loss by this makes the step's
    gradient the sum over all boxes of the global batch divided by its total box count.
    """
    count = torch.tensor(float(local_count), dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


def weighted_loss(loss_dict: Mapping[str, Tensor], cfg: LossConfig) -> Tensor:
    """``Σ weight · term`` over every ``loss_class*``, ``loss_bbox*``, ``loss_giou*`` key.

    Suffixed keys (``_0``, ``_enc``, ``_dn_3``) get the weight of their term; other keys
    (diagnostics, losses owned elsewhere) are ignored. Raises if no key is a loss term.
    """
    parts = [
        getattr(cfg, term) * value
        for key, value in loss_dict.items()
        for term in LOSS_TERMS
        if key.startswith(term)
    ]
    if not parts:
        raise ValueError(f"no loss term among keys {sorted(loss_dict)}; expected {LOSS_TERMS}")
    return torch.stack(parts).sum()


class SetCriterion:
    """DETR/DINO set criterion over a visual-prompt detector's output dict (unweighted terms).

    Stateless apart from ``cfg``; the matcher is passed per call so that objectives choose it.
    Computes in float32 with autocast off, whatever precision the model ran in.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def __call__(
        self,
        outputs: Mapping[str, Any],
        targets: list[Target],
        matcher: Matcher,
        *,
        num_boxes: float | None = None,
    ) -> dict[str, Tensor]:
        """Every loss term of one (micro-)batch, plus final-layer diagnostics.

        Args:
            outputs: the model's output dict (``workbench.model`` docstring): ``pred_logits
                [B, Q, U]``, ``pred_boxes [B, Q, 4]`` normalised cxcywh, optional
                ``aux_outputs``, ``enc_outputs``, ``dn_outputs``.
            targets: B targets, labels = prompt indices in ``[0, U)``, boxes normalised cxcywh;
                the same list the model was given (``dn_outputs.positive_target`` indexes it).
            matcher: assigns queries to non-crowd boxes for each non-denoising output.
            num_boxes: overrides the normaliser (clamped to >= 1, not all-reduced). With
                gradient accumulation over W micro-batches, pass the step's global non-crowd
                box count divided by W (and by the world size) and average the micro-batch
                losses; this reproduces W processes of one micro-batch each exactly.

        Returns:
            Scalar float32 tensors; ``loss_*`` keys carry gradient.
        """
        device = outputs["pred_logits"].device
        if num_boxes is None:
            num_boxes = global_num_boxes(count_boxes(targets), device)
        num_boxes = max(float(num_boxes), 1.0)
        kept = drop_crowd(targets)
        with torch.autocast(device_type=device.type, enabled=False):
            indices = matcher(outputs, kept)
            losses = self._set_losses(outputs, kept, indices, num_boxes, suffix="")
            losses.update(self._diagnostics(outputs, kept, indices))
            if self.cfg.aux_loss:
                for i, aux in enumerate(outputs.get("aux_outputs") or []):
                    losses.update(
                        self._set_losses(aux, kept, matcher(aux, kept), num_boxes, f"_{i}")
                    )
            enc = outputs.get("enc_outputs")
            if self.cfg.enc_loss and enc is not None:
                losses.update(self._set_losses(enc, kept, matcher(enc, kept), num_boxes, "_enc"))
            dn = outputs.get("dn_outputs")
            if self.cfg.dn_loss and dn is not None:
                losses.update(self._dn_losses(dn, targets, num_boxes))
        return losses

    def _set_losses(
        self,
        out: Mapping[str, Tensor],
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
        suffix: str,
    ) -> dict[str, Tensor]:
        """Focal, L1 and GIoU terms of one matched output (``[B, Q, U]`` / ``[B, Q, 4]``)."""
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()
        batch_idx, query_idx, labels, tgt_boxes = _gather_matched(targets, indices, boxes.device)
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, labels] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, self.cfg.focal_alpha, self.cfg.focal_gamma)
        l1, giou = _box_losses(boxes[batch_idx, query_idx], tgt_boxes)
        return {
            f"loss_class{suffix}": focal.sum() / num_boxes,
            f"loss_bbox{suffix}": l1.sum() / num_boxes,
            f"loss_giou{suffix}": giou.sum() / num_boxes,
        }

    @torch.no_grad()
    def _diagnostics(
        self, out: Mapping[str, Tensor], targets: list[Target], indices: list[tuple[Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """``cardinality_error``: mean |#queries scoring > 0.5 on some prompt - #boxes| per image
        (DETR's, with the sigmoid's 0.5 as "not background"); ``matched_iou``: mean IoU of the
        matched pairs (0 when nothing is matched)."""
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()
        if logits.shape[-1]:
            predicted = (logits.max(dim=-1).values > 0).sum(dim=1).float()
        else:
            predicted = torch.zeros(logits.shape[0], device=logits.device)
        actual = torch.tensor([float(len(t)) for t in targets], device=logits.device)
        batch_idx, query_idx, _, tgt_boxes = _gather_matched(targets, indices, boxes.device)
        iou = box_ops.elementwise_box_iou(
            box_ops.cxcywh_to_xyxy(boxes[batch_idx, query_idx]), box_ops.cxcywh_to_xyxy(tgt_boxes)
        )
        return {
            "cardinality_error": (predicted - actual).abs().mean(),
            "matched_iou": iou.mean() if iou.numel() else iou.new_zeros(()),
        }

    def _dn_losses(
        self, dn: Mapping[str, Any], targets: list[Target], num_boxes: float
    ) -> dict[str, Tensor]:
        """Denoising terms of every decoder layer, keys ``*_dn_{l}``.

        ``pred_logits [L, B, D, U]``, ``pred_boxes [L, B, D, 4]``. Positive dn queries learn
        their box and its prompt; negatives and padding learn "no prompt". A positive whose box
        is a crowd region is left out of every term (the main losses never see crowd boxes).
        """
        logits, boxes = dn["pred_logits"].float(), dn["pred_boxes"].float()
        num_layers, bsz, num_dn, _ = logits.shape
        norm = num_boxes * max(int(dn["num_groups"]), 1)
        onehot = torch.zeros_like(logits[0])
        weight = torch.ones(bsz, num_dn, 1, device=logits.device)
        rows, cols, tgt_boxes = [], [], []
        for b, target in enumerate(targets):
            query, which = _dn_positives(dn, b, target, logits.device)
            crowd = target.iscrowd.to(which.device)[which]
            weight[b, query[crowd]] = 0.0
            query, which = query[~crowd], which[~crowd]
            onehot[b, query, target.labels.to(which.device)[which]] = 1.0
            rows.append(torch.full_like(query, b))
            cols.append(query)
            tgt_boxes.append(target.boxes_cxcywh[which.to(target.boxes_cxcywh.device)])
        alpha, gamma = self.cfg.focal_alpha, self.cfg.focal_gamma
        focal = sigmoid_focal_loss(logits, onehot.expand_as(logits), alpha, gamma)
        batch_idx, query_idx = torch.cat(rows), torch.cat(cols)
        l1, giou = _box_losses(
            boxes[:, batch_idx, query_idx], torch.cat(tgt_boxes).to(boxes).expand(num_layers, -1, 4)
        )
        losses = {}
        for layer in range(num_layers):
            losses[f"loss_class_dn_{layer}"] = (focal[layer] * weight).sum() / norm
            losses[f"loss_bbox_dn_{layer}"] = l1[layer].sum() / norm
            losses[f"loss_giou_dn_{layer}"] = giou[layer].sum() / norm
        return losses


def _gather_matched(
    targets: list[Target], indices: list[tuple[Tensor, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flat ``(batch_idx, query_idx, labels, boxes_cxcywh)`` of all matched pairs of the batch."""
    batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
    query_idx = torch.cat([q for q, _ in indices])
    labels = torch.cat(
        [t.labels[j.to(t.labels.device)] for t, (_, j) in zip(targets, indices, strict=True)]
    )
    boxes = torch.cat(
        [t.boxes_cxcywh[j.to(t.labels.device)] for t, (_, j) in zip(targets, indices, strict=True)]
    )
    return (
        batch_idx.to(device),
        query_idx.to(device),
        labels.to(device),
        boxes.to(device=device, dtype=torch.float32),
    )


def _box_losses(pred_cxcywh: Tensor, tgt_cxcywh: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair L1 (summed over the 4 coordinates) and ``1 - GIoU``: ``[..., 4] -> [...]``."""
    l1 = (pred_cxcywh - tgt_cxcywh).abs().sum(-1)
    giou = box_ops.elementwise_generalized_box_iou(
        box_ops.cxcywh_to_xyxy(pred_cxcywh), box_ops.cxcywh_to_xyxy(tgt_cxcywh)
    )
    return l1, 1 - giou


def _dn_positives(
    dn: Mapping[str, Any], b: int, target: Target, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Image ``b``'s positive dn queries and the target rows they rebuild, validated."""
    query = torch.as_tensor(dn["positive_index"][b], dtype=torch.int64, device=device)
    which = torch.as_tensor(dn["positive_target"][b], dtype=torch.int64, device=device)
    if query.shape != which.shape:
        raise ValueError(
            f"dn_outputs image {b}: positive_index has {query.numel()} entries but "
            f"positive_target has {which.numel()}; they must pair one to one"
        )
    if which.numel() and (int(which.min()) < 0 or int(which.max()) >= len(target)):
        raise ValueError(
            f"dn_outputs image {b}: positive_target refers to box {int(which.max())} but the "
            f"target has {len(target)} boxes; pass the criterion the same targets as the model"
        )
    return query, which


def text_visual_alignment_loss(
    visual: Tensor, visual_labels: Tensor, text_by_label: Tensor, logit_scale: Tensor
) -> Tensor:
    """DINO-R1's text-visual contrastive loss (method.md#training-prompts), symmetric InfoNCE over
    the batch's classes.

    Args:
        visual: ``[E, d]`` prompt-encoder embeddings of every instance in the batch.
        visual_labels: ``[E]`` int64 dataset label of each instance.
        text_by_label: ``[C, d]`` frozen text embedding of each dataset label's name.
        logit_scale: learnable log-temperature (initialised to log(1 / 0.07)).

    For each class present, the class-mean visual embedding and its name embedding are L2
    normalised; ``logits = exp(scale) * t @ v.T`` and the loss is (CE(logits) + CE(logits.T)) / 2.
    A batch with fewer than two classes gives 0 (nothing to contrast), still attached to the graph.
    """
    labels, inverse = torch.unique(visual_labels, return_inverse=True)
    if len(labels) < 2:
        return visual.sum() * 0.0 + logit_scale * 0.0
    sums = visual.new_zeros(len(labels), visual.shape[1]).index_add(0, inverse, visual.float())
    v = F.normalize(sums / torch.bincount(inverse)[:, None], dim=-1)
    t = F.normalize(text_by_label[labels].to(v), dim=-1)
    logits = logit_scale.exp() * t @ v.T
    target = torch.arange(len(labels), device=v.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
