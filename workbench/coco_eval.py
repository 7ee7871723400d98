"""COCO-format ground truth and results, COCO AP with either evaluator, and per-image TP/FP.

Shared by :mod:`workbench.evaluation`, the FiftyOne integration and the benchmarks. Boxes in COCO
dicts are absolute xywh pixels of the original image.

- Ground truth comes from a :class:`~workbench.data.dataset.DetectionDataset`'s untransformed
  targets. A box's ``area`` is its box area (w x h): datasets here carry boxes, not masks, so
  the small / medium / large split is by box area (COCO's own json uses mask areas, so APs/m/l
  on real COCO differ slightly from the official numbers; AP, AP50, AP75 do not use area).
- Crowd regions keep ``iscrowd = 1``: COCO evaluation ignores detections on them.
- AP through faster-coco-eval (default, ~5x faster) or pycocotools (the reference); the two agree
  exactly (research/stack-probe.md §4, and tests/test_evaluation.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench import boxes as box_ops
from workbench.types import Detections

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
EVALUATORS = ("faster", "pycocotools")


def ground_truth_coco(dataset, indices: Sequence[int] | None = None) -> dict:
    """COCO ground-truth dict of ``dataset`` (all images, or those at ``indices``).

    Annotation ids are the dataset's when they are positive and unique, else ``1..N`` (COCOeval
    treats id 0 as "unmatched"). Categories carry ``split`` when the dataset says.
    """
    indices = range(len(dataset)) if indices is None else indices
    images, annotations = [], []
    for index in indices:
        info, target = dataset.image_info(index), dataset.target(index)
        h, w = target.orig_size
        images.append(
            {
                "id": int(target.image_id),
                "file_name": info.get("file_name", ""),
                "width": int(info.get("width", w)),
                "height": int(info.get("height", h)),
            }
        )
        annotations += _annotations(target, [c.id for c in dataset.categories])
    ids = [a["id"] for a in annotations]
    if min(ids, default=1) <= 0 or len(set(ids)) != len(ids):
        for k, ann in enumerate(annotations, 1):
            ann["id"] = k
    categories = [
        {"id": c.id, "name": c.name, **({"split": c.split} if c.split else {})}
        for c in dataset.categories
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _annotations(target, category_id_of_label: list[int]) -> list[dict]:
    xywh = box_ops.convert(target.boxes_xyxy(target.orig_size), "xyxy", "xywh").tolist()
    rows = zip(
        xywh,
        target.labels.tolist(),
        target.iscrowd.tolist(),
        target.annotation_ids.tolist(),
        strict=True,
    )
    return [
        {
            "id": int(ann_id),
            "image_id": int(target.image_id),
            "bbox": box,
            "area": box[2] * box[3],
            "category_id": category_id_of_label[label],
            "iscrowd": int(crowd),
        }
        for box, label, crowd, ann_id in rows
    ]


def coco_results(
    detections_per_image: Mapping[int, Detections],
    category_ids: Sequence[int | None] | Mapping[int, Sequence[int | None]],
) -> list[dict]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh pixels, ``score``).

    Args:
        detections_per_image: image id -> its Detections (absolute xyxy pixels).
        category_ids: the COCO category id of each prompt index, shared by every image or per
            image id. Detections of prompts mapped to ``None`` (user prompts) are left out.
    """
    results = []
    for image_id, dets in detections_per_image.items():
        ids = category_ids[image_id] if isinstance(category_ids, Mapping) else category_ids
        xywh = box_ops.convert(dets.boxes_xyxy, "xyxy", "xywh").tolist()
        for box, score, p in zip(
            xywh, dets.scores.tolist(), dets.prompt_index.tolist(), strict=True
        ):
            if ids[p] is not None:
                results.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(ids[p]),
                        "bbox": box,
                        "score": float(score),
                    }
                )
    return results


@dataclass(frozen=True)
class CocoStats:
    """The 12 COCO numbers (``STAT_NAMES`` order; NaN where COCO says -1, i.e. no ground truth)
    and the AP of each category id (NaN when it has no ground truth)."""

    stats: np.ndarray
    per_category: dict[int, float]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self.stats.tolist(), strict=True))


def coco_stats(
    gt: dict,
    results: list[dict],
    *,
    evaluator: str = "faster",
    cat_ids: Sequence[int] | None = None,
) -> CocoStats:
    """COCO bbox evaluation of ``results`` against ``gt`` (dicts as built above).

    ``cat_ids`` restricts the evaluation to those categories (e.g. the novel split). No results
    at all give AP 0 (not an error, as pycocotools' ``loadRes([])`` would raise).
    """
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator={evaluator!r}: use one of {EVALUATORS}")
    if evaluator == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print progress
        coco_gt = _coco(COCO, gt)
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:
            coco_dt = _coco(COCO, {**gt, "annotations": []})
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = sorted(int(c) for c in cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.array(ev.stats[:12], dtype=np.float64)
    stats[stats < 0] = np.nan
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [iou, recall, category], area all, 100 dets
    per_category = {}
    for k, cat in enumerate(ev.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_category[int(cat)] = float(valid.mean()) if valid.size else float("nan")
    return CocoStats(stats=stats, per_category=per_category)


def _coco(cls, data: dict):
    """A COCO object from a dict (pycocotools' constructor only reads files)."""
    coco = cls()
    coco.dataset = copy.deepcopy(data)
    coco.createIndex()
    return coco


@dataclass(frozen=True)
class MatchCounts:
    """Detections of one image matched at one IoU threshold, COCO style: per category, best
    score first, each to the unmatched ground truth it overlaps most. ``ignored`` detections
    fell on a crowd region."""

    num_gt: int
    num_detections: int
    tp: int
    fp: int
    ignored: int


def match_counts(
    gt: dict, results: list[dict], iou_threshold: float = 0.5
) -> dict[int, MatchCounts]:
    """Per image id of ``gt``: ground truth (non-crowd) and detection counts, TP / FP / ignored.

    Every detection counts (COCO AP keeps the best 100 per image and category).
    """
    gts, dts = defaultdict(list), defaultdict(list)
    for a in gt["annotations"]:
        gts[a["image_id"], a["category_id"]].append(a)
    for r in results:
        dts[r["image_id"], r["category_id"]].append(r)
    counts = {img["id"]: [0, 0, 0, 0, 0] for img in gt["images"]}  # gt, dets, tp, fp, ignored
    for (image_id, _), anns in gts.items():
        counts[image_id][0] += sum(not a["iscrowd"] for a in anns)
    for key, dets in dts.items():
        tp, fp, ignored = _match_one(gts.get(key, []), dets, iou_threshold)
        row = counts[key[0]]
        row[1] += len(dets)
        row[2], row[3], row[4] = row[2] + tp, row[3] + fp, row[4] + ignored
    return {i: MatchCounts(*row) for i, row in counts.items()}


def _match_one(anns: list[dict], dets: list[dict], thr: float) -> tuple[int, int, int]:
    """TP, FP, ignored for the detections of one (image, category)."""
    dets = sorted(dets, key=lambda r: -r["score"])
    to_xyxy = lambda rows: box_ops.convert(  # noqa: E731
        torch.tensor([r["bbox"] for r in rows], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy"
    )
    det_boxes = to_xyxy(dets)
    solid = [a for a in anns if not a["iscrowd"]]
    crowd = [a for a in anns if a["iscrowd"]]
    iou = box_ops.box_iou(det_boxes, to_xyxy(solid))  # [D, G]
    # COCO's IoU with a crowd region is intersection / detection area.
    crowd_boxes = to_xyxy(crowd)
    lt = torch.maximum(det_boxes[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(det_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    crowd_iou = inter / box_ops.box_area(det_boxes)[:, None].clamp(min=1e-12)
    taken = torch.zeros(len(solid), dtype=torch.bool)
    tp = fp = ignored = 0
    for d in range(len(dets)):
        candidates = iou[d].masked_fill(taken, -1.0)
        if len(solid) and float(candidates.max()) >= thr:
            taken[int(candidates.argmax())] = True
            tp += 1
        elif len(crowd) and float(crowd_iou[d].max()) >= thr:
            ignored += 1
        else:
            fp += 1
    return tp, fp, ignored


def results_for_ground_truth(detections: dict, gt: dict) -> tuple[list[dict], dict[str, int]]:
    """A detections json (COCO, with ``score``; what ``workbench predict FOLDER`` writes) as
    result dicts against ``gt``: images matched by ``file_name`` (exactly, else by the unique
    ground-truth name ending in ``/`` + it, e.g. ``images/a.png`` for ``a.png``), categories by
    name. Also returns counts of what could not be matched (detections' images and categories
    missing from ``gt``, their detections, and ``gt`` images without a detections entry)."""
    by_name = {img["file_name"]: img["id"] for img in gt["images"]}
    by_tail: dict[str, list[int]] = defaultdict(list)
    for name, image_id in by_name.items():
        parts = name.split("/")
        for k in range(1, len(parts)):
            by_tail["/".join(parts[k:])].append(image_id)
    image_of = {}
    for img in detections["images"]:
        name = img["file_name"]
        tail = by_tail.get(name, [])
        found = by_name.get(name, tail[0] if len(tail) == 1 else None)
        if found is not None:
            image_of[img["id"]] = found
    category_by_name = {c["name"]: c["id"] for c in gt["categories"]}
    category_of = {
        c["id"]: category_by_name[c["name"]]
        for c in detections["categories"]
        if c["name"] in category_by_name
    }
    results, dropped = [], 0
    for ann in detections["annotations"]:
        image_id, cat = image_of.get(ann.get("image_id")), category_of.get(ann.get("category_id"))
        bbox, score = ann.get("bbox"), ann.get("score", 1.0)
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in [*bbox, score])
        ):
            raise ValueError(
                f"detection annotation {ann.get('id')} needs a bbox of four numbers [x, y, w, h] "
                f"and a numeric score; got bbox {bbox!r}, score {score!r}"
            )
        if image_id is None or cat is None:
            dropped += 1
            continue
        results.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "bbox": [float(v) for v in ann["bbox"]],
                "score": float(ann.get("score", 1.0)),
            }
        )
    unmatched = {
        "images_not_in_gt": len(detections["images"]) - len(image_of),
        "categories_not_in_gt": len(detections["categories"]) - len(category_of),
        "detections_dropped": dropped,
        "gt_images_without_detections_entry": len(set(by_name.values()) - set(image_of.values())),
    }
    return results, unmatched
