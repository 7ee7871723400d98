"""What every detection dataset of the workbench offers (COCO json, VOC via COCO, synthetic shapes).

A dataset maps an index to ``(image, Target)``: the image a float32 ``[3, H, W]`` RGB tensor in
[0, 1], the target's boxes normalised cxcywh with contiguous labels. Besides that it can list its
categories and, without decoding any image, its instances, which is what prompt sampling needs.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from workbench import boxes as box_ops
from workbench.types import Target

# transform(image [3, H, W] float, target) -> (image, target); see workbench.data.transforms.
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class DatasetError(ValueError):
    """A dataset file or image is unusable; the message names it and says how to fix it."""


class DatasetWarning(UserWarning):
    """Loading repaired or dropped part of a dataset; details in ``dataset.report``."""


@dataclass(frozen=True)
class Category:
    """One category.

    Attributes:
        id: the category id in the source json (any integer, not necessarily contiguous).
        name: its name.
        label: contiguous index in ``[0, num_categories)``, in order of ascending ``id``.
        split: ``"base"`` (seen in training) or ``"novel"`` (held out), when the dataset says.
    """

    id: int
    name: str
    label: int
    split: str | None = None


@dataclass(frozen=True)
class Instance:
    """One annotated box, as prompt sampling sees it (no pixels needed).

    ``box_xyxy`` is in absolute pixels of the original image.
    """

    image_index: int
    image_id: int
    annotation_id: int
    label: int
    box_xyxy: tuple[float, float, float, float]
    iscrowd: bool = False


@dataclass
class LoadReport:
    """What loading repaired or dropped; ``python -m workbench data stats`` prints it.

    ``counts`` keys, from the COCO loader (C), the VOC converter (V) and the YOLO one (Y):

    - ``clipped_boxes`` (C, V, Y): partly outside the image, clipped.
    - ``dropped_outside`` (C, V, Y): entirely outside the image.
    - ``dropped_invalid`` (C, V, Y): no 4 finite numbers, a bad ``iscrowd``, no VOC ``<name>``,
      or a YOLO line of the wrong number of fields.
    - ``dropped_degenerate`` (C, Y): zero or negative size, or under ``min_box_size`` once
      clipped.
    - ``dropped_unknown_category`` (C, Y): ``category_id`` not in ``categories``, a YOLO class
      id not in its names.
    - ``dropped_duplicate`` (Y): a YOLO label line repeated in its file.
    - ``dropped_missing_image`` (C): ``image_id`` not in ``images``.
    - ``dropped_inverted`` (V): ``xmax < xmin`` or ``ymax < ymin``.
    - ``size_mismatch`` (C): decoded image size differs from the json's; boxes scaled.
    - ``size_from_image`` (V): ``<size>`` missing or not positive; image header used.
    - ``size_corrected`` (V): ``<size>`` disagrees with the image header; header used.
    - ``split_ids_without_annotation`` (V): ImageSets id without an XML; left out.
    - ``assigned_annotation_ids`` (C): annotations without a usable ``id`` got new ones.
    - ``crowd_boxes`` (C): crowd boxes, kept and flagged.
    - ``images_without_annotations`` (C): images with no kept annotation.

    The last three describe the data rather than repairs. ``messages`` holds the first warnings,
    each naming the file and the annotation.
    """

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    max_messages: int = 50

    def add(self, key: str, message: str | None = None) -> None:
        self.counts[key] += 1
        if message is not None and len(self.messages) < self.max_messages:
            self.messages.append(message)


@runtime_checkable
class DetectionDataset(Protocol):
    """The interface the prompt sampler, trainer, evaluation and CLI rely on."""

    categories: list[Category]
    report: LoadReport

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        """``(image [3, H, W] float32 in [0, 1], Target)`` after the dataset's transforms."""
        ...

    def load_image(self, index: int) -> Tensor:
        """The untransformed image: ``[3, H, W]`` float32 RGB in [0, 1]."""
        ...

    def target(self, index: int) -> Target:
        """The untransformed target (``size == orig_size``), without decoding the image."""
        ...

    def image_info(self, index: int) -> dict:
        """COCO image record: ``id``, ``file_name``, ``width``, ``height`` (+ ``path``)."""
        ...

    def instances(self) -> list[Instance]:
        """Every annotated box of the dataset, crowd regions flagged."""
        ...


class ImagesById(Mapping):
    """The untransformed images of a dataset by image id: the one mapping cross-image exemplars
    are looked up in (``exemplar.image_id`` -> the image its box lies on).

    Keys are the ids of the images with at least one annotated box (the only ones an exemplar can
    come from); nothing is decoded until asked for. With ``encode`` (e.g. ``Predictor.encode``),
    each image is passed through it on first use and the last ``capacity`` results are kept, as
    a few reference images serve every searched image.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        encode: Callable[[Tensor], object] | None = None,
        capacity: int = 256,
    ):
        self.dataset, self.encode, self.capacity = dataset, encode, capacity
        self.index_of = {inst.image_id: inst.image_index for inst in dataset.instances()}
        self._cache: OrderedDict[int, object] = OrderedDict()

    def __getitem__(self, image_id):
        if self.encode is None:
            return self.dataset.load_image(self.index_of[image_id])
        if image_id not in self._cache:
            self._cache[image_id] = self.encode(self.dataset.load_image(self.index_of[image_id]))
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(image_id)
        return self._cache[image_id]

    def __contains__(self, image_id) -> bool:  # without decoding anything
        return image_id in self.index_of

    def __iter__(self) -> Iterator:
        return iter(self.index_of)

    def __len__(self) -> int:
        return len(self.index_of)


def make_target(
    annotations: list[dict],
    image_id: int,
    size_hw: tuple[int, int],
    label_of: dict[int, int],
) -> Target:
    """A :class:`Target` from clean COCO annotation dicts (absolute ``bbox`` xywh pixels).

    ``label_of`` maps category id -> contiguous label. Validation and repair happen before this
    (in the loaders); here every annotation is trusted.
    """
    n = len(annotations)
    xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(n, 4)
    return Target(
        boxes_cxcywh=box_ops.convert(xywh, "xywh", "cxcywh", dst_normalized=True, size_hw=size_hw),
        labels=torch.tensor([label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
        image_id=int(image_id),
        size=(int(size_hw[0]), int(size_hw[1])),
        orig_size=(int(size_hw[0]), int(size_hw[1])),
        iscrowd=torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool),
        annotation_ids=torch.tensor([int(a.get("id", -1)) for a in annotations], dtype=torch.int64),
    )
