"""Our values as FiftyOne labels, and the schema that declares them for the App sidebar.

FiftyOne boxes are ``[x, y, w, h]``: top-left corner and size as fractions of the image; they are
converted from our absolute xyxy pixels through :mod:`workbench.boxes` only. ``fiftyone`` is
imported inside the functions that build labels, never at module import.

Fields (``<model>`` is the name a checkpoint is exported under, e.g. ``sft`` or ``grqo``):

- ``ground_truth``: the dataset's boxes; label = category name; ``annotation_id``,
  ``category_id``, ``iscrowd``.
- ``<model>_predictions``: post-processed detections; label = prompt (category) name,
  ``confidence`` = the detection's score, plus :data:`QUERY_ATTRIBUTES` of its query.
- ``<model>_queries`` (optional): every selected query; label = its best prompt's name,
  ``confidence`` = its best score, plus :data:`QUERY_ATTRIBUTES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from workbench import boxes as box_ops
from workbench.data.dataset import Category
from workbench.integrations.fiftyone_predict import ImagePrediction
from workbench.types import Detections, QueryRecord, Target

GT_FIELD = "ground_truth"

# attribute -> (FiftyOne field type, list subfield type or None, meaning)
GT_ATTRIBUTES: dict[str, tuple[str, str | None, str]] = {
    "annotation_id": ("IntField", None, "the annotation's id in the dataset"),
    "category_id": ("IntField", None, "the category's id in the dataset"),
    "iscrowd": ("BooleanField", None, "a crowd region: COCO evaluation ignores detections on it"),
}
QUERY_ATTRIBUTES: dict[str, tuple[str, str | None, str]] = {
    "query_rank": ("IntField", None, "rank in selection order (0 = highest objectness)"),
    "prompt_id": ("IntField", None, "VisualPrompt.prompt_id of the prompt it answers"),
    "prompt_image_ids": (
        "ListField",
        "IntField",
        "source image id of each exemplar of that prompt (interactive: this "
        "image; cross-image: the exemplars' images)",
    ),
    "prompt_annotation_ids": ("ListField", "IntField", "annotation id of each exemplar box"),
    "objectness": ("FloatField", None, "sigmoid of the max-over-prompts selection logit"),
    "reward": ("FloatField", None, "GRQO reward: minus the lowest matching cost to the GT"),
    "advantage": ("FloatField", None, "group-relative advantage over the image's queries"),
    "muted": ("BooleanField", None, "a low-ranked query whose advantage GRQO mutes"),
    "kl": ("FloatField", None, "k3 KL of the objectness against the reference checkpoint"),
    "matched_iou": ("FloatField", None, "IoU with the lowest-cost ground-truth box"),
    "matched_annotation_id": ("IntField", None, "annotation id of that ground-truth box"),
    "hungarian": ("BooleanField", None, "assigned a ground-truth box by Hungarian matching"),
}


def relative_xywh(boxes_xyxy: torch.Tensor, size_hw: tuple[int, int]) -> list[list[float]]:
    """``[N, 4]`` absolute xyxy pixels -> FiftyOne's ``[x, y, w, h]`` fractions of the image."""
    boxes = box_ops.convert(
        boxes_xyxy.double(), "xyxy", "xywh", dst_normalized=True, size_hw=size_hw
    )
    return boxes.tolist()


def ground_truth_detections(target: Target, categories: Sequence[Category]):
    """``fo.Detections`` of an untransformed target (boxes in the original image's frame)."""
    import fiftyone as fo

    by_label = {c.label: c for c in categories}
    boxes = relative_xywh(target.boxes_xyxy(target.orig_size), target.orig_size)
    rows = zip(
        boxes,
        target.labels.tolist(),
        target.iscrowd.tolist(),
        target.annotation_ids.tolist(),
        strict=True,
    )
    return fo.Detections(
        detections=[
            fo.Detection(
                label=by_label[label].name,
                bounding_box=box,
                iscrowd=bool(crowd),
                annotation_id=int(ann),
                category_id=int(by_label[label].id),
            )
            for box, label, crowd, ann in rows
        ]
    )


def _number(value) -> float | None:
    """A finite float, else None (the App's range filters cannot handle NaN or inf)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def query_attributes(pred: ImagePrediction, query: int, prompt: int) -> dict:
    """:data:`QUERY_ATTRIBUTES` of one query (row ``query`` of ``pred.queries``) answering
    ``prompt``; the per-query values are None when the prediction carries no table."""
    p = pred.prompts[prompt] if 0 <= prompt < len(pred.prompts) else None
    row: QueryRecord | None = pred.queries[query] if 0 <= query < len(pred.queries) else None
    attrs = dict.fromkeys(QUERY_ATTRIBUTES)
    attrs["query_rank"] = int(query) if query >= 0 else None
    attrs["prompt_image_ids"], attrs["prompt_annotation_ids"] = [], []
    if p is not None:
        attrs["prompt_id"] = int(p.prompt_id)
        attrs["prompt_image_ids"] = pred.prompt_image_ids(prompt)
        attrs["prompt_annotation_ids"] = [
            int(e.annotation_id) for e in p.exemplars if e.annotation_id is not None
        ]
    if row is None:
        return attrs
    truth = pred.truth_annotation_ids
    matched = row.matched_gt if row.matched_gt is not None and row.matched_gt < len(truth) else None
    attrs.update(
        query_rank=int(row.rank),
        objectness=_number(row.objectness),
        reward=_number(row.reward),
        advantage=_number(row.advantage),
        muted=bool(row.muted),
        kl=_number(row.kl),
        matched_iou=_number(row.iou),
        hungarian=row.extra.get("hungarian"),
        matched_annotation_id=None if matched is None else int(truth[matched]),
    )
    return attrs


def detection_labels(dets: Detections, attributes: Sequence[Mapping] | None = None):
    """``fo.Detections`` of our :class:`~workbench.types.Detections` (absolute xyxy pixels of
    ``dets.image_size``): label = the prompt's name, ``confidence`` = the score, plus
    ``attributes[i]`` on detection ``i``. The one converter every FiftyOne field goes through."""
    import fiftyone as fo

    boxes = relative_xywh(dets.boxes_xyxy, dets.image_size)
    extra = attributes if attributes is not None else [{}] * len(boxes)
    rows = zip(boxes, dets.scores.tolist(), dets.names, extra, strict=True)
    return fo.Detections(
        detections=[
            fo.Detection(label=name, bounding_box=box, confidence=float(score), **attrs)
            for box, score, name, attrs in rows
        ]
    )


def prediction_detections(pred: ImagePrediction):
    """``fo.Detections`` of the post-processed detections of one image, with the
    :data:`QUERY_ATTRIBUTES` of each one's query."""
    dets = pred.detections
    pairs = zip(dets.query_index.tolist(), dets.prompt_index.tolist(), strict=True)
    return detection_labels(dets, [query_attributes(pred, int(q), int(p)) for q, p in pairs])


def query_detections(pred: ImagePrediction):
    """``fo.Detections`` of every selected query of one image (its best prompt and score)."""
    rows, names = pred.queries, [p.name for p in pred.prompts]
    as_detections = Detections(
        boxes_xyxy=torch.tensor([r.box_xyxy for r in rows], dtype=torch.float64).reshape(-1, 4),
        scores=torch.tensor([float(r.score) for r in rows], dtype=torch.float64),
        prompt_index=torch.tensor([r.prompt_index for r in rows], dtype=torch.int64),
        names=tuple(names[r.prompt_index] if names else "" for r in rows),
        image_size=pred.detections.image_size,
    )
    attrs = [query_attributes(pred, k, r.prompt_index) for k, r in enumerate(rows)]
    return detection_labels(as_detections, attrs)


def declare(dataset, field: str, attributes: dict[str, tuple[str, str | None, str]]) -> None:
    """Declare ``field.detections.<attribute>`` with its type and meaning, so the App sidebar
    lists it even where every value so far is None; declaring again is a no-op."""
    import fiftyone as fo

    for name, (ftype, subfield, meaning) in attributes.items():
        kwargs = {"subfield": getattr(fo, subfield)} if subfield else {}
        dataset.add_sample_field(
            f"{field}.detections.{name}", getattr(fo, ftype), description=meaning, **kwargs
        )
