"""The small types that cross module boundaries.

Box conventions (DESIGN.md "Contracts"): inside the data pipeline, model, matcher and losses boxes
are normalised cxcywh; at the Predictor and above, absolute xyxy pixels of the source image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench import boxes as box_ops


def _check_rows(name: str, tensor: Tensor, n: int, tail: tuple[int, ...] = ()) -> None:
    if tuple(tensor.shape) != (n, *tail):
        raise ValueError(f"{name} must have shape {(n, *tail)}, got {tuple(tensor.shape)}")


@dataclass(frozen=True)
class Target:
    """Ground truth of one image.

    Attributes:
        boxes_cxcywh: ``[N, 4]`` float32, normalised (cx, cy, w, h) relative to ``size``.
        labels: ``[N]`` int64. A contiguous dataset label (index into the dataset's categories),
            or, after :func:`workbench.data.prompts.assign_targets`, the index of the prompt
            the box answers.
        image_id: the image's id in its COCO json.
        size: ``(height, width)`` of the image tensor the boxes refer to (after transforms).
        orig_size: ``(height, width)`` of the image file.
        iscrowd: ``[N]`` bool; crowd regions are never prompts and are ignored by COCO evaluation.
        annotation_ids: ``[N]`` int64 COCO annotation ids (``-1`` when unknown).
    """

    boxes_cxcywh: Tensor
    labels: Tensor
    image_id: int
    size: tuple[int, int]
    orig_size: tuple[int, int]
    iscrowd: Tensor | None = None
    annotation_ids: Tensor | None = None

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0]) if self.labels.ndim == 1 else -1
        _check_rows("Target.labels", self.labels, n)
        _check_rows("Target.boxes_cxcywh", self.boxes_cxcywh, n, (4,))
        if self.iscrowd is None:
            object.__setattr__(self, "iscrowd", torch.zeros(n, dtype=torch.bool))
        if self.annotation_ids is None:
            object.__setattr__(self, "annotation_ids", torch.full((n,), -1, dtype=torch.int64))
        _check_rows("Target.iscrowd", self.iscrowd, n)
        _check_rows("Target.annotation_ids", self.annotation_ids, n)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, keep: Tensor) -> Target:
        """The subset of boxes where ``keep`` (bool mask or index tensor) selects."""
        return dataclasses.replace(
            self,
            boxes_cxcywh=self.boxes_cxcywh[keep],
            labels=self.labels[keep],
            iscrowd=self.iscrowd[keep],
            annotation_ids=self.annotation_ids[keep],
        )

    def boxes_xyxy(self, size_hw: tuple[int, int] | None = None) -> Tensor:
        """``[N, 4]`` absolute xyxy pixels at ``size_hw`` (default: ``self.size``)."""
        return box_ops.convert(
            self.boxes_cxcywh, "cxcywh", "xyxy", src_normalized=True, size_hw=size_hw or self.size
        )

    def to(self, device: torch.device | str) -> Target:
        return dataclasses.replace(
            self,
            boxes_cxcywh=self.boxes_cxcywh.to(device),
            labels=self.labels.to(device),
            iscrowd=self.iscrowd.to(device),
            annotation_ids=self.annotation_ids.to(device),
        )


@dataclass(frozen=True)
class Exemplar:
    """One example box of a prompt class.

    Attributes:
        box_xyxy: ``(x0, y0, x1, y1)`` absolute pixels on the exemplar's source image.
        image_id: the source image; ``None`` means the image being searched (interactive prompt).
        annotation_id: the COCO annotation it was taken from, when it came from a dataset.
    """

    box_xyxy: tuple[float, float, float, float]
    image_id: int | str | None = None
    annotation_id: int | None = None


@dataclass(frozen=True)
class VisualPrompt:
    """One class to find, given by one or more exemplar boxes.

    Several exemplars are encoded one by one and averaged into one class embedding (DINO-R1's
    generic visual prompt); they may come from the searched image or from reference images.

    Attributes:
        name: display name; never fed to the model.
        exemplars: the example boxes.
        prompt_id: identifies the class in Detections and prompt banks.
        label: the dataset label it stands for (evaluation), ``None`` for user prompts.
        negative: a "not this kind" prompt: it competes for queries but its detections are hidden.
    """

    name: str
    exemplars: tuple[Exemplar, ...]
    prompt_id: int = 0
    label: int | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        if not self.exemplars:
            raise ValueError(f"prompt {self.name!r} has no exemplar boxes; draw at least one box")


@dataclass(frozen=True)
class PromptSet:
    """Prompts in model coordinates: exemplar boxes on a list of prompt images, grouped in classes.

    Training (docs/method.md#training-prompts) uses one exemplar per class present in the batch,
    taken from the batch's own images, so ``image_index`` indexes the batch; evaluation may use K
    exemplars per class from reference images, whose embeddings the model averages per class.

    Attributes:
        boxes_cxcywh: ``[E, 4]`` float32 exemplar boxes, normalised to their source image.
        image_index: ``[E]`` int64 source image of each exemplar (index into the prompt images).
        prompt_index: ``[E]`` int64 which prompt (class) each exemplar belongs to, in ``[0, U)``.
        labels: ``[U]`` int64 dataset label each prompt stands for (``-1`` if none).
        names: ``U`` display names.
        annotation_ids: ``[E]`` int64 COCO annotation id of each exemplar (``-1`` if none).
    """

    boxes_cxcywh: Tensor
    image_index: Tensor
    prompt_index: Tensor
    labels: Tensor
    names: tuple[str, ...] = ()
    annotation_ids: Tensor | None = None

    def __post_init__(self) -> None:
        e = int(self.image_index.shape[0])
        _check_rows("PromptSet.boxes_cxcywh", self.boxes_cxcywh, e, (4,))
        _check_rows("PromptSet.prompt_index", self.prompt_index, e)
        if self.annotation_ids is None:
            object.__setattr__(self, "annotation_ids", torch.full((e,), -1, dtype=torch.int64))
        _check_rows("PromptSet.annotation_ids", self.annotation_ids, e)
        u = self.num_prompts
        if e and (int(self.prompt_index.min()) < 0 or int(self.prompt_index.max()) >= u):
            raise ValueError(
                f"PromptSet.prompt_index must lie in [0, {u}), got {self.prompt_index}"
            )
        if self.names and len(self.names) != u:
            raise ValueError(f"PromptSet.names has {len(self.names)} entries for {u} prompts")

    @property
    def num_prompts(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_exemplars(self) -> int:
        return int(self.image_index.shape[0])

    def to(self, device: torch.device | str) -> PromptSet:
        return dataclasses.replace(
            self,
            boxes_cxcywh=self.boxes_cxcywh.to(device),
            image_index=self.image_index.to(device),
            prompt_index=self.prompt_index.to(device),
            labels=self.labels.to(device),
            annotation_ids=self.annotation_ids.to(device),
        )


@dataclass
class Batch:
    """A padded batch of images with their targets and (for training) the sampled prompts.

    Attributes:
        images: ``[B, 3, H, W]`` float32 RGB in [0, 1], zero-padded at the bottom and right.
        pixel_mask: ``[B, H, W]`` bool, True on real pixels (transformers' convention).
        targets: one :class:`Target` per image; boxes are normalised by the unpadded size.
        prompts: the batch's shared prompts, or None before sampling.
    """

    images: Tensor
    pixel_mask: Tensor
    targets: list[Target]
    prompts: PromptSet | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            images=self.images.to(device),
            pixel_mask=self.pixel_mask.to(device),
            targets=[t.to(device) for t in self.targets],
            prompts=None if self.prompts is None else self.prompts.to(device),
        )


@dataclass(frozen=True)
class Detections:
    """What the Predictor returns for one image.

    Attributes:
        boxes_xyxy: ``[D, 4]`` float32 absolute pixels of the source image.
        scores: ``[D]`` float32 in [0, 1].
        prompt_index: ``[D]`` int64 index of the prompt each detection answers.
        names: ``D`` display names (the prompt's name).
        query_index: ``[D]`` int64 decoder query that produced each detection (``-1`` if none).
        image_size: ``(height, width)`` of the source image.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    prompt_index: Tensor
    names: tuple[str, ...]
    image_size: tuple[int, int]
    query_index: Tensor | None = None

    def __post_init__(self) -> None:
        d = int(self.scores.shape[0])
        _check_rows("Detections.boxes_xyxy", self.boxes_xyxy, d, (4,))
        _check_rows("Detections.prompt_index", self.prompt_index, d)
        if len(self.names) != d:
            raise ValueError(f"Detections.names has {len(self.names)} entries for {d} boxes")
        if self.query_index is None:
            object.__setattr__(self, "query_index", torch.full((d,), -1, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: Tensor) -> Detections:
        """The detections at ``index`` (``[D]`` bool mask or int64 positions), in its order."""
        positions = index.nonzero().flatten() if index.dtype == torch.bool else index
        return Detections(
            self.boxes_xyxy[positions],
            self.scores[positions],
            self.prompt_index[positions],
            tuple(self.names[int(i)] for i in positions.tolist()),
            self.image_size,
            self.query_index[positions],
        )

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready dicts: box_xyxy, score, prompt_index, name, query_index."""
        return [
            {
                "box_xyxy": [round(float(v), 3) for v in box],
                "score": float(score),
                "prompt_index": int(p),
                "name": name,
                "query_index": int(q),
            }
            for box, score, p, name, q in zip(
                self.boxes_xyxy.tolist(),
                self.scores.tolist(),
                self.prompt_index.tolist(),
                self.names,
                self.query_index.tolist(),
                strict=True,
            )
        ]


@dataclass(frozen=True)
class QueryRecord:
    """One decoder query of one image, as the per-query analysis table shows it.

    Box in absolute xyxy pixels; the reward-side fields are None when no ground truth is known.
    """

    rank: int
    query_index: int
    token_index: int
    select_score: float
    objectness: float
    score: float
    prompt_index: int
    box_xyxy: tuple[float, float, float, float]
    matched_gt: int | None = None
    iou: float | None = None
    cost: float | None = None
    reward: float | None = None
    advantage: float | None = None
    muted: bool = False
    kl: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
