"""Supervised fine-tuning: Hungarian-matched detection losses (+ optional text-visual alignment).

The loss is DINO's: focal 1 / L1 5 / GIoU 2 on the last decoder layer, every earlier layer, the
selected encoder proposals and the denoising queries, weighted in ``losses.weighted_loss``. With
``loss.align_weight > 0`` DINO-R1's contrastive alignment between every instance's prompt
embedding and its class name's frozen text embedding is added (docs/method.md#training-prompts;
weight 100 in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from workbench.config import LossConfig
from workbench.data.prompts import assign_targets
from workbench.losses import SetCriterion, text_visual_alignment_loss, weighted_loss
from workbench.matching import HungarianMatcher
from workbench.model.detector import unwrap
from workbench.objectives.base import ObjectiveOutput, StepInfo, detach_metrics
from workbench.types import Batch, PromptSet, Target


@dataclass
class DetectorStep:
    """One forward pass of a training step: outputs, prompt-relabelled targets, prompts."""

    outputs: dict
    targets: list[Target]
    prompts: PromptSet


def all_instances(targets: Sequence[Target]) -> PromptSet:
    """Every non-crowd box of the batch as an exemplar of its own class (for the alignment loss:
    class means over all instances, not only the sampled prompt)."""
    boxes, images, labels = [], [], []
    for b, target in enumerate(targets):
        keep = ~target.iscrowd
        boxes.append(target.boxes_cxcywh[keep])
        images.append(torch.full((int(keep.sum()),), b, dtype=torch.int64))
        labels.append(target.labels[keep])
    labels_cat = torch.cat(labels)
    device = targets[0].boxes_cxcywh.device
    return PromptSet(
        boxes_cxcywh=torch.cat(boxes),
        image_index=torch.cat(images).to(device),
        prompt_index=torch.arange(len(labels_cat), device=device),
        labels=labels_cat,
    )


def null_prompt(batch: Batch) -> PromptSet:
    """A stand-in prompt for a batch without any box: the whole first image, class -1."""
    device = batch.images.device
    return PromptSet(
        boxes_cxcywh=torch.tensor([[0.5, 0.5, 1.0, 1.0]], device=device),
        image_index=torch.zeros(1, dtype=torch.int64, device=device),
        prompt_index=torch.zeros(1, dtype=torch.int64, device=device),
        labels=torch.tensor([-1], device=device),
    )


def run_detector(model: nn.Module, batch: Batch, with_instances: bool = False) -> DetectorStep:
    """The model on a batch whose prompts are sampled; targets relabelled to prompt indices.

    A batch without any box has nothing to prompt for; it still runs the model, on a stand-in
    prompt, so every process of a distributed run takes part in the step (its loss is zeroed).
    """
    if batch.prompts is None:
        raise ValueError("the batch has no prompts; sample them first (sample_training_prompts)")
    if batch.prompts.num_prompts == 0:
        batch = Batch(batch.images, batch.pixel_mask, batch.targets, null_prompt(batch))
        with_instances = False
    targets = assign_targets(batch.targets, batch.prompts.labels)
    align = all_instances(batch.targets) if with_instances else None
    out = model(batch.images, batch.pixel_mask, batch.prompts, targets, align_boxes=align)
    return DetectorStep(out, targets, batch.prompts)


class SFTObjective:
    """``(model, batch) -> (loss, metrics)`` for supervised training."""

    def __init__(self, cfg: LossConfig, name_embeddings: Tensor | None = None):
        """``name_embeddings``: ``[C, d]`` frozen text embedding of each dataset label's name,
        required when ``cfg.align_weight > 0`` (see ``model.text.NameEncoder``)."""
        if cfg.align_weight > 0 and name_embeddings is None:
            raise ValueError("loss.align_weight > 0 needs the class names' text embeddings")
        self.cfg = cfg
        self.matcher = HungarianMatcher(cfg)
        self.criterion = SetCriterion(cfg)
        self.name_embeddings = name_embeddings

    def detection_losses(self, step: DetectorStep, info: StepInfo) -> tuple[Tensor, dict]:
        terms = self.criterion(step.outputs, step.targets, self.matcher, num_boxes=info.num_boxes)
        loss = weighted_loss(terms, self.cfg)
        if int(step.prompts.labels.min()) < 0:  # the stand-in prompt of a batch without boxes
            loss = loss * 0.0
        return loss, terms

    def alignment(self, model: nn.Module, step: DetectorStep, batch: Batch) -> Tensor:
        labels = torch.cat([t.labels[~t.iscrowd] for t in batch.targets])
        scale = unwrap(model).model.align_logit_scale
        return text_visual_alignment_loss(
            step.outputs["align_embeddings"], labels, self.name_embeddings, scale
        )

    def __call__(self, model: nn.Module, batch: Batch, info: StepInfo) -> ObjectiveOutput:
        align = self.cfg.align_weight > 0 and batch.prompts.num_prompts > 0
        step = run_detector(model, batch, with_instances=align)
        loss, terms = self.detection_losses(step, info)
        metrics = detach_metrics(terms)
        if align:
            loss_align = self.alignment(model, step, batch)
            loss = loss + self.cfg.align_weight * loss_align
            metrics["loss_align"] = float(loss_align.detach())
        metrics["num_prompts"] = float(step.prompts.num_prompts)
        return ObjectiveOutput(loss=loss, metrics=metrics, extras={"step": step})
