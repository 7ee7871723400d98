"""Our values as FiftyOne labels, and the schema that declares them for the App sidebar.

FiftyOne boxes are ``[x, y, w, h]``: top-left corner and size as fractions of the image; they are
converted from our absolute xyxy pixels through :mod:`workbench.boxes` only. ``fiftyone`` is
imported inside the functions that build labels, never at module import.

Fields (``<model>`` is the name a checkpoint is exported under, e.g. ``sft`` or ``grqo``):

- ``ground_truth``: the dataset's boxes; label = category name; ``annotation_id``,
  ``category_id``, ``iscrowd``.
- ``<model>_predictions`` (shown in the App): what a user sees, as in the app: the detections
  scoring at least the display threshold, duplicates merged
  (:func:`workbench.postprocess.shown_detections`); label = prompt (category) name,
  ``confidence`` = the detection's score, plus :data:`QUERY_ATTRIBUTES` of its query and
  :data:`SHOWN_ATTRIBUTES`.
- ``<model>_topk`` (hidden at first): the raw top-K detections, unthresholded and unmerged, as
  ``workbench eval`` scores them; COCO mAP is computed on these; :data:`TOPK_ATTRIBUTES`.
- ``<model>_queries`` (hidden at first): every selected query; label = its best prompt's name,
  ``confidence`` = its best score, plus :data:`QUERY_ATTRIBUTES`.
- ``exemplars``: the exemplar boxes the images were searched with, on the image they lie on;
  label = the prompt's name, plus :data:`EXEMPLAR_ATTRIBUTES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from workbench import boxes as box_ops
from workbench.data.dataset import Category
from workbench.integrations.fiftyone_predict import ImagePrediction
from workbench.postprocess import shown_detections
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
    "matched_annotation_id": (
        "IntField",
        None,
        "annotation id of that ground-truth box (None when the query does not overlap it)",
    ),
    "hungarian": ("BooleanField", None, "assigned a ground-truth box by Hungarian matching"),
}


TOPK_ATTRIBUTES = {k: QUERY_ATTRIBUTES[k] for k in ("query_rank", "prompt_id")}
SHOWN_ATTRIBUTES: dict[str, tuple[str, str | None, str]] = {
    "gt_max_iou": (
        "FloatField",
        None,
        "highest IoU with any ground-truth box of any class (near 0: nothing is annotated there)",
    ),
    "duplicates": (
        "IntField",
        None,
        "raw same-class detections above the threshold overlapping this one by IoU > 0.7 "
        "(merged into it, unless merging is off or at a higher IoU)",
    ),
    "duplicate_iou": ("FloatField", None, "the highest IoU among those duplicates"),
    "near_missed": (
        "BooleanField",
        None,
        "the model's nearest shown detection to a ground-truth box the model missed",
    ),
    "changed_gt": (
        "StringField",
        None,
        "'fixed': the candidate's detection of ground truth the baseline missed; 'broken': the "
        "baseline's detection of ground truth the candidate missed",
    ),
}
EXEMPLAR_ATTRIBUTES: dict[str, tuple[str, str | None, str]] = {
    "prompt_id": ("IntField", None, "VisualPrompt.prompt_id of the prompt the box belongs to"),
    "annotation_id": ("IntField", None, "annotation id of the exemplar box"),
    "searched_here": (
        "BooleanField",
        None,
        "the prompt searched this image (interactive), not other images (cross-image)",
    ),
}
DUPLICATE_IOU = 0.7


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
        matched_annotation_id=(
            None if matched is None or not (row.iou or 0.0) > 0 else int(truth[matched])
        ),
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


def topk_detections(pred: ImagePrediction):
    """``fo.Detections`` of the raw top-K detections of one image (what COCO mAP scores), with
    the light :data:`TOPK_ATTRIBUTES` only: there are hundreds per image."""
    dets = pred.detections
    pairs = zip(dets.query_index.tolist(), dets.prompt_index.tolist(), strict=True)
    attrs = [
        {k: query_attributes(pred, int(q), int(p))[k] for k in TOPK_ATTRIBUTES} for q, p in pairs
    ]
    return detection_labels(dets, attrs)


def shown_attributes(
    raw: Detections, shown: Detections, truth_xyxy: torch.Tensor, score_threshold: float
) -> list[dict[str, float | int | None]]:
    """The :data:`SHOWN_ATTRIBUTES` of each ``shown`` detection that one image decides: its
    highest IoU with the ground truth (``[G, 4]`` xyxy in the detections' frame), and how many
    raw same-class detections scoring at least ``score_threshold`` overlap it by more than
    :data:`DUPLICATE_IOU` (the merge folded them into it). The rest are set after evaluation."""
    if not len(shown):
        return []
    candidates = raw.select(raw.scores >= score_threshold)
    same = shown.prompt_index[:, None] == candidates.prompt_index[None, :]
    iou = box_ops.box_iou(shown.boxes_xyxy.double(), candidates.boxes_xyxy.double())
    iou = torch.where(same, iou, torch.zeros_like(iou))
    iou[iou > 1 - 1e-9] = 0.0  # the detection itself (or an exact copy with the same box)
    over = iou > DUPLICATE_IOU
    gt_iou = (
        box_ops.box_iou(shown.boxes_xyxy.double(), truth_xyxy.double()).amax(dim=1)
        if len(truth_xyxy)
        else torch.zeros(len(shown), dtype=torch.float64)
    )
    return [
        {
            "gt_max_iou": float(gt_iou[i]),
            "duplicates": int(over[i].sum()),
            "duplicate_iou": float(iou[i][over[i]].max()) if over[i].any() else None,
            "near_missed": None,
            "changed_gt": None,
        }
        for i in range(len(shown))
    ]


def prediction_detections(
    pred: ImagePrediction,
    truth_xyxy: torch.Tensor | None = None,
    *,
    score_threshold: float = 0.0,
    merge_iou: float | None = None,
):
    """``fo.Detections`` of what a user sees of one image: the detections scoring at least
    ``score_threshold``, duplicates merged at ``merge_iou`` (None: kept), with the
    :data:`QUERY_ATTRIBUTES` of each one's query and the :data:`SHOWN_ATTRIBUTES`
    (``gt_max_iou`` against ``truth_xyxy``, the image's ground truth; None without it)."""
    raw = pred.detections
    dets = shown_detections(raw, score_threshold, merge_iou)
    pairs = zip(dets.query_index.tolist(), dets.prompt_index.tolist(), strict=True)
    attrs = [query_attributes(pred, int(q), int(p)) for q, p in pairs]
    truth = torch.zeros(0, 4) if truth_xyxy is None else truth_xyxy
    for row, extra in zip(attrs, shown_attributes(raw, dets, truth, score_threshold), strict=True):
        row.update(extra)
        if truth_xyxy is None:
            row["gt_max_iou"] = None
    return detection_labels(dets, attrs)


def exemplar_detections(
    pred: ImagePrediction, image_id: int, image_size: tuple[int, int], *, searched: bool
):
    """``fo.Detections`` of the exemplar boxes of ``pred``'s prompts that lie on image
    ``image_id`` (of size ``image_size``): every exemplar of an interactive prompt
    (``searched``), or those of cross-image prompts taken from this image."""
    rows = [
        (ex.box_xyxy, p.name, p.prompt_id, ex.annotation_id)
        for p in pred.prompts
        for ex in p.exemplars
        if (ex.image_id is None and pred.image_id == image_id)
        or (ex.image_id is not None and int(ex.image_id) == image_id)
    ]
    boxes = torch.tensor([r[0] for r in rows], dtype=torch.float64).reshape(-1, 4)
    dets = Detections(
        boxes_xyxy=boxes,
        scores=torch.ones(len(rows), dtype=torch.float64),
        prompt_index=torch.zeros(len(rows), dtype=torch.int64),
        names=tuple(r[1] for r in rows),
        image_size=image_size,
    )
    attrs = [
        {
            "prompt_id": int(r[2]),
            "annotation_id": None if r[3] is None else int(r[3]),
            "searched_here": searched,
        }
        for r in rows
    ]
    labels = detection_labels(dets, attrs)
    for det in labels.detections:
        det.confidence = None  # an exemplar is given, not scored
    return labels


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
