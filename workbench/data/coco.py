"""COCO-format detection datasets (COCO, LVIS, ODinW, and VOC after :mod:`workbench.data.voc`).

:func:`load_coco_json` (from :mod:`workbench.data.coco_json`) checks the file's *structure* and
refuses what cannot be repaired; :class:`CocoDetection` then repairs or drops single
*annotations*. Every repair message goes to ``dataset.report`` (the first 50) and to this
module's logger at DEBUG level, and one :class:`DatasetWarning` per dataset sums them up: real
datasets have thousands of clipped boxes, and a warning per box would hide everything else.
``strict=True`` raises at the first repair.

Images keep the json's order; labels are contiguous in order of ascending category id. Kept
annotations are light: ``id``, ``image_id``, ``category_id``, ``bbox`` (absolute xywh pixels,
repaired), ``area``, ``iscrowd``; segmentations are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from workbench.data.coco_json import as_id, canonical_split, load_coco_json
from workbench.data.dataset import (
    Category,
    DatasetError,
    DatasetWarning,
    Instance,
    LoadReport,
    Transform,
    make_target,
)
from workbench.data.images import exif_frame_for, read_image
from workbench.types import Target

# DatasetWarning and load_coco_json live in dataset.py and coco_json.py; this is their usual door.
__all__ = ["CocoDetection", "DatasetWarning", "load_coco_json"]

logger = logging.getLogger(__name__)

# COCO jsons store boxes with two decimals, so overshoot below this is rounding, not a bad box.
_CLIP_TOLERANCE_PX = 0.01
# Counts that describe the data rather than repairs; they never warn and strict ignores them.
_NOT_REPAIRS = {"crowd_boxes", "images_without_annotations", "assigned_annotation_ids"}


def _as_box(bbox: Any) -> list[float] | None:
    """``[x, y, w, h]`` as floats, or None unless it is a list of 4 finite real numbers."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None
    try:
        box = [float(v) for v in bbox]
    except OverflowError:  # integers beyond float range
        return None
    return box if all(math.isfinite(v) for v in box) else None


class CocoDetection:
    """A COCO json as a :class:`~workbench.data.dataset.DetectionDataset`.

    Args:
        annotation_file: path to the json, or the parsed dict.
        image_root: folder that ``file_name`` is relative to; default: the json's folder (a dict
            source has none, so images can only be loaded when it is given).
        transforms: ``transform(image, target) -> (image, target)`` applied by ``__getitem__``.
        min_box_size: boxes narrower or shorter than this many pixels, after clipping, are dropped.
        strict: raise a DatasetError at the first repair instead of repairing.

    Images are read as displayed (EXIF orientation applied, the frame annotation tools draw
    in), and the json's ``width`` / ``height`` are checked against that size. A json that states
    the stored size of an image its EXIF tag turns (an exporter that ignored the tag) has its
    boxes in the stored frame: that image is read unturned (counted as ``exif_stored_frame``), so
    image and boxes always share one frame.

    If a decoded image's size still differs from the json's, ``__getitem__`` warns, counts
    ``size_mismatch`` and scales the boxes with the image (the normalised boxes are kept,
    ``size`` and ``orig_size`` become the decoded size): the json's size is the one the
    annotator's boxes were drawn at, so a resized copy of the image needs proportionally resized
    boxes. In DataLoader workers the counts stay in the workers' copies of the dataset.
    """

    def __init__(
        self,
        annotation_file: str | Path | dict,
        image_root: str | Path | None = None,
        transforms: Transform | None = None,
        min_box_size: float = 1.0,
        strict: bool = False,
    ) -> None:
        from_dict = not isinstance(annotation_file, str | os.PathLike)
        self.source = "<dict>" if from_dict else str(annotation_file)
        if image_root is None and not from_dict:
            image_root = Path(annotation_file).parent
        self.image_root = None if image_root is None else Path(image_root)
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        self.strict = strict
        self.report = LoadReport()
        data = load_coco_json(annotation_file, report=self.report)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.categories = [
            Category(c["id"], c["name"], label, canonical_split(c)) for label, c in enumerate(cats)
        ]
        self.category_id_of_label: list[int] = [c.id for c in self.categories]
        self.label_of: dict[int, int] = {c.id: c.label for c in self.categories}
        self.images: list[dict] = data["images"]
        self._index_of_id = {img["id"]: i for i, img in enumerate(self.images)}
        self._annotations: list[list[dict]] = [[] for _ in self.images]
        for ann in data["annotations"]:
            clean = self._clean(ann)
            if clean is not None:
                self._annotations[self._index_of_id[clean["image_id"]]].append(clean)
        self.report.counts["images_without_annotations"] = sum(not a for a in self._annotations)
        self._instances: list[Instance] | None = None
        self._stored_frame: set[int] = set()  # images whose json is in the stored (unturned) frame
        self._warn_summary()

    # --- repairs --------------------------------------------------------------------------------

    def _repair(self, key: str, message: str) -> None:
        """Record one repair (or, when strict, raise it)."""
        message = f"{self.source}: {message}"
        if self.strict:
            raise DatasetError(f"{message} (strict=True: fix it, or pass strict=False to repair)")
        logger.debug(message)
        self.report.add(key, message)

    def _clean(self, ann: dict) -> dict | None:
        """The annotation with a checked, clipped bbox; None (and a report entry) if dropped."""
        index = self._index_of_id.get(as_id(ann.get("image_id")))
        if index is None:
            return self._repair(
                "dropped_missing_image",
                f"annotation {ann['id']} refers to image_id {ann.get('image_id')!r}, which is not "
                "in 'images'; dropped",
            )
        img = self.images[index]
        where = f"image {img['id']} ({img['file_name']}), annotation {ann['id']}"
        box = _as_box(ann.get("bbox"))
        crowd = ann.get("iscrowd", 0)
        if box is None or crowd not in (0, 1, None):  # True == 1, False == 0
            return self._repair(
                "dropped_invalid",
                f"{where}: bbox {ann.get('bbox')!r} / iscrowd {crowd!r} is not a list of 4 "
                "finite numbers [x, y, width, height] / 0 or 1; dropped",
            )
        category_id = as_id(ann.get("category_id"))
        if category_id not in self.label_of:
            return self._repair(
                "dropped_unknown_category",
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'; dropped",
            )
        box = self._fit_box(box, (img["height"], img["width"]), where)
        if box is None:
            return None
        area = ann.get("area")
        if not (isinstance(area, int | float) and math.isfinite(area) and area >= 0):
            area = box[2] * box[3]
        self.report.counts["crowd_boxes"] += bool(crowd)
        clean = {"id": ann["id"], "image_id": img["id"], "category_id": category_id}
        return {**clean, "bbox": box, "area": float(area), "iscrowd": int(bool(crowd))}

    def _fit_box(self, box: list[float], size_hw: tuple[int, int], where: str) -> list | None:
        """Clip an xywh box to the image; None if it is degenerate or outside."""
        x, y, w, h = box
        height, width = size_hw
        if not (w > 0 and h > 0):
            return self._repair("dropped_degenerate", f"{where}: bbox {box} has size <= 0; dropped")
        x0, y0, x1, y1 = x, y, x + w, y + h
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            return self._repair(
                "dropped_outside",
                f"{where}: bbox {box} lies outside the {width}x{height} image; dropped",
            )
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        if cx1 - cx0 < self.min_box_size or cy1 - cy0 < self.min_box_size:
            return self._repair(
                "dropped_degenerate",
                f"{where}: bbox {box} is {cx1 - cx0:.3g}x{cy1 - cy0:.3g} px inside the image, "
                f"thinner than min_box_size={self.min_box_size}; dropped",
            )
        if max(cx0 - x0, cy0 - y0, x1 - cx1, y1 - cy1) > _CLIP_TOLERANCE_PX:
            self._repair(
                "clipped_boxes",
                f"{where}: bbox {box} extends beyond the {width}x{height} image; clipped",
            )
        return [cx0, cy0, cx1 - cx0, cy1 - cy0]

    def _warn_summary(self) -> None:
        repairs = {k: n for k, n in sorted(self.report.counts.items()) if k not in _NOT_REPAIRS}
        if sum(repairs.values()):
            first = "\n  ".join(self.report.messages[:3])
            warnings.warn(
                f"{self.source}: repaired annotations {repairs}; first:\n  {first}\nAll are in "
                "dataset.report; pass strict=True to raise instead.",
                DatasetWarning,
                stacklevel=3,
            )

    # --- the DetectionDataset protocol ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, c = sum(map(len, self._annotations)), len(self.categories)
        return (
            f"CocoDetection({self.source!r}, {len(self)} images, {n} annotations, {c} categories)"
        )

    def image_path(self, index: int) -> Path:
        if self.image_root is None:
            raise DatasetError(
                f"{self.source}: no image_root was given, so images cannot be loaded; pass "
                "image_root= (the folder the images' file_name is relative to)"
            )
        return self.image_root / self.images[index]["file_name"]

    def image_info(self, index: int) -> dict:
        """The json's image record (all its keys) plus ``path`` when an image root is known."""
        info = dict(self.images[index])
        if self.image_root is not None:
            info["path"] = str(self.image_path(index))
        return info

    def annotations(self, index: int) -> list[dict]:
        """The image's kept annotations (repaired COCO dicts, absolute xywh pixels)."""
        return [dict(a) for a in self._annotations[index]]

    def load_image(self, index: int) -> Tensor:
        """``[3, H, W]`` float32 RGB in [0, 1], in the frame of the json's boxes (see the class
        docstring); DatasetError naming json and image if unreadable."""
        img = self.images[index]
        try:
            path = self.image_path(index)
            displayed = exif_frame_for(path, (img["height"], img["width"]))
            if not displayed and index not in self._stored_frame:
                self._stored_frame.add(index)
                self.report.add(
                    "exif_stored_frame",
                    f"{self.source}: image {img['id']} ({img['file_name']}): the json gives its "
                    "stored size, not the EXIF-turned one it displays at; read unturned",
                )
            return read_image(path, apply_exif=displayed)
        except DatasetError as err:
            raise DatasetError(
                f"{self.source}, image id {self.images[index]['id']}: {err}"
            ) from err

    def target(self, index: int) -> Target:
        """The untransformed target at the json's image size; no image is decoded."""
        img = self.images[index]
        return make_target(
            self._annotations[index], img["id"], (img["height"], img["width"]), self.label_of
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self.load_image(index), self.target(index)
        decoded_hw = (int(image.shape[-2]), int(image.shape[-1]))
        if decoded_hw != target.size:
            message = (
                f"{self.source}: image {target.image_id} ({self.images[index]['file_name']}) "
                f"decodes to height x width {decoded_hw}, but the json says {target.size}; its "
                "boxes are scaled to the decoded size"
            )
            if self.strict:
                raise DatasetError(f"{message}. Fix width/height in the json (strict=True)")
            self.report.add("size_mismatch", message)
            warnings.warn(message, DatasetWarning, stacklevel=2)
            # Normalised boxes are unchanged by scaling; only the size they refer to changes.
            target = dataclasses.replace(target, size=decoded_hw, orig_size=decoded_hw)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def instances(self) -> list[Instance]:
        """Every kept annotation; boxes in absolute xyxy pixels of the json's image size."""
        if self._instances is None:
            self._instances = [
                Instance(
                    index,
                    a["image_id"],
                    a["id"],
                    self.label_of[a["category_id"]],
                    (x, y, x + w, y + h),
                    bool(a["iscrowd"]),
                )
                for index, anns in enumerate(self._annotations)
                for a in anns
                for x, y, w, h in [a["bbox"]]
            ]
        return list(self._instances)

    def coco_dict(self) -> dict:
        """The dataset as loaded (repaired annotations) in COCO form, e.g. as evaluation GT."""
        return {
            "images": [dict(img) for img in self.images],
            "annotations": [dict(a) for anns in self._annotations for a in anns],
            "categories": [
                {"id": c.id, "name": c.name, **({"split": c.split} if c.split else {})}
                for c in self.categories
            ],
        }
