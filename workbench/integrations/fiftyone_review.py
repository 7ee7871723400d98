"""Reviewing a folder's detections in FiftyOne and exporting the corrected labels.

The loop: ``predict CHECKPOINT FOLDER --out dets.json`` proposes boxes -> ``fiftyone review
dets.json --images FOLDER`` loads them into a FiftyOne dataset, field ``labels`` (with their
scores) -> in the FiftyOne App a reviewer tags what is wrong, with the App's own label and sample
tags -> ``fiftyone export-labels NAME --out corrected.json`` writes the corrected COCO json ->
``adapt corrected.json`` trains on it.

The tags (``TAGS``): a box tagged ``reject`` is dropped; a box tagged ``is:NAME`` becomes class
NAME (a new class is added); a sample tagged ``reviewed`` is one whose boxes were checked
(``--reviewed-only`` exports those images only). The open-source FiftyOne App tags labels but
does not draw or move boxes: a missed object is added by prompting for it (``predict`` with one
more exemplar) or with an annotation backend (``dataset.annotate``), into the same field.

Loading the same detections again leaves the dataset, and every tag on it, as it is; other
detections under the same name are refused unless ``overwrite`` (the rules of
:func:`workbench.integrations.fiftyone.build_dataset`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from workbench.data.coco import CocoDetection
from workbench.data.coco_json import load_coco_json
from workbench.inputs import InputError
from workbench.integrations.fiftyone import _open_for, load, source_identity
from workbench.safe_paths import writable_folder, write_atomic

FIELD = "labels"
REJECT, RELABEL, REVIEWED = "reject", "is:", "reviewed"
TAGS = {
    REJECT: "drop this box",
    RELABEL + "NAME": "this box is class NAME",
    REVIEWED: "(a sample tag) this image's boxes were checked",
}


def review_dataset(dets_json: str | Path, images: str | Path, name: str, *, overwrite=False):
    """The FiftyOne dataset ``name`` holding ``dets_json``'s boxes (and scores) on the images
    under ``images``, in field ``labels``; an existing one of the same detections is returned
    as it is, tags and all."""
    import fiftyone as fo

    dets_json, images = Path(dets_json), Path(images)
    labelled = CocoDetection(dets_json, images)  # refuses a malformed json or a missing image
    data = load_coco_json(dets_json)
    identity = source_identity(labelled)
    identity["description"] = f"the detections {dets_json.name} ({identity['description']})"
    existed = fo.dataset_exists(name)
    ds = _open_for(name, identity, overwrite)
    if existed and len(ds) and not overwrite:
        return ds
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    samples = []
    for im in data["images"]:
        w, h = im["width"], im["height"]
        boxes = [
            fo.Detection(
                label=names[a["category_id"]],
                bounding_box=[
                    a["bbox"][0] / w,
                    a["bbox"][1] / h,
                    a["bbox"][2] / w,
                    a["bbox"][3] / h,
                ],
                confidence=a.get("score"),
                annotation_id=a["id"],
            )
            for a in by_image.get(im["id"], [])
        ]
        samples.append(
            fo.Sample(
                filepath=str((images / im["file_name"]).absolute()),
                image_id=im["id"],
                file_name=im["file_name"],
                metadata=fo.ImageMetadata(width=w, height=h),
                **{FIELD: fo.Detections(detections=boxes)},
            )
        )
    ds.add_samples(samples, progress=False)
    info = ds.info
    info["workbench"] = {
        **info.get("workbench", {}),
        "review": {"detections": str(dets_json.resolve()), "images": str(images.resolve())},
        "categories": [{"id": i, "name": n} for i, n in names.items()],
    }
    ds.info = info
    ds.save()
    return ds


def tag_with_truth(ds, truth: CocoDetection, *, iou: float = 0.5) -> Counter:
    """Tag ``ds`` as a reviewer who knows ``truth`` (a labels file of the same images, matched
    by the file's own name, without folders) would: a box overlapping a true box of its class by
    ``iou`` is kept, one overlapping a true box of another class is tagged ``is:NAME``, any
    other ``reject``; every image ``reviewed``. For walkthroughs and benchmarks of the loop;
    returns the tag counts."""
    import torch

    from workbench.boxes import box_iou

    names = {c.label: c.name for c in truth.categories}
    by_file = {Path(truth.image_info(i)["file_name"]).name: i for i in range(len(truth))}
    tags: Counter = Counter()
    for sample in ds.select_fields([FIELD, "metadata", "file_name"]):
        index = by_file.get(Path(sample["file_name"]).name)
        dets = sample[FIELD].detections if sample[FIELD] else []
        if index is None or not dets:
            continue
        target = truth.target(index)
        true_boxes = target.boxes_xyxy(target.orig_size)
        w, h = sample.metadata.width, sample.metadata.height
        boxes = torch.tensor(
            [[x * w, y * h, (x + bw) * w, (y + bh) * h] for x, y, bw, bh in
             (d.bounding_box for d in dets)]
        )  # fmt: skip
        overlap = box_iou(boxes, true_boxes) if len(true_boxes) else torch.zeros(len(dets), 0)
        for det, row in zip(dets, overlap, strict=True):
            if not len(row) or row.max() < iou:
                det.tags = [*det.tags, REJECT]
            else:
                true_name = names[int(target.labels[int(row.argmax())])]
                if true_name != det.label:
                    det.tags = [*det.tags, RELABEL + true_name]
            tags.update(det.tags)
        sample.tags = [*sample.tags, REVIEWED]
        sample.save()
    return tags


def export_labels(
    name: str, out: str | Path, *, reviewed_only: bool = False, min_score: float = 0.0
) -> dict:
    """Write the reviewed labels of dataset ``name`` as a COCO json at ``out`` (``file_name``
    relative to its folder, so ``adapt out`` and ``CocoDetection(out)`` find the images);
    returns the counts."""
    ds = load(name)
    if FIELD not in ds.get_field_schema():
        raise InputError(
            f"FiftyOne dataset {name!r} has no field {FIELD!r}: it was not made by `fiftyone "
            "review`; load detections with `fiftyone review DETS.json --images FOLDER` first"
        )
    view = ds.match_tags(REVIEWED) if reviewed_only else ds
    if reviewed_only and not len(view):
        raise InputError(
            f"no sample of {name!r} is tagged {REVIEWED!r}: tag the images you checked in the "
            "App, or export every image (drop --reviewed-only)"
        )
    out = Path(out)
    categories = [c["name"] for c in ds.info.get("workbench", {}).get("categories", [])]
    counts: Counter = Counter()
    images, annotations = [], []
    for sample in view.select_fields([FIELD, "metadata", "image_id"]):
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": os.path.relpath(sample.filepath, out.parent.absolute()),
                "width": sample.metadata.width,
                "height": sample.metadata.height,
            }
        )
        w, h = sample.metadata.width, sample.metadata.height
        for det in sample[FIELD].detections if sample[FIELD] else []:
            tags = det.tags or []
            if REJECT in tags:
                counts["rejected"] += 1
                continue
            if (det.confidence or 0.0) < min_score and not tags:
                counts["below_min_score"] += 1
                continue
            label = next((t[len(RELABEL) :] for t in tags if t.startswith(RELABEL)), det.label)
            counts["relabelled"] += label != det.label
            if label not in categories:
                categories.append(label)
            x, y, bw, bh = det.bounding_box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories.index(label) + 1,
                    "bbox": [x * w, y * h, bw * w, bh * h],
                    "area": bw * w * bh * h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"labels reviewed in FiftyOne dataset {name!r}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
    }
    writable_folder(out.parent, "--out")
    write_atomic(out, json.dumps(coco))
    return {"images": len(images), "boxes": len(annotations), **counts}
