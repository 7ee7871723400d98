"""The app's "Send to FiftyOne": its exported COCO json files into a persistent FiftyOne dataset.

The app exports one COCO json per model (``<stem>_<model>.json``, detections with a ``score``) and
the image they refer to; :func:`load_app_results` adds that image to the ``workbench-app``
dataset (or updates it) with one ``<model>_predictions`` field per file, so a user can open the
App on everything they sent. fiftyone is imported inside the function only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from workbench import boxes as box_ops
from workbench.inputs import InputError

APP_DATASET = "workbench-app"


def _detections(data: dict, size_hw: tuple[int, int]):
    import fiftyone as fo

    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    out = []
    for ann in data.get("annotations", []):
        box = box_ops.normalize(torch.tensor(ann["bbox"], dtype=torch.float64), size_hw)
        out.append(
            fo.Detection(
                label=names.get(ann["category_id"], str(ann["category_id"])),
                bounding_box=[float(v) for v in box],
                confidence=float(ann.get("score", 1.0)),
            )
        )
    return fo.Detections(detections=out)


def load_app_results(paths: Sequence[str], dataset_name: str = APP_DATASET) -> str:
    """Add the image of the app's exported COCO jsons to ``dataset_name`` with each model's
    detections as ``<model>_predictions``; returns a message saying where they are."""
    files = [Path(p) for p in paths if str(p).endswith(".json")]
    if not files:
        raise InputError("nothing to send to FiftyOne: export the results first")
    import fiftyone as fo

    ds = (
        fo.load_dataset(dataset_name)
        if fo.dataset_exists(dataset_name)
        else fo.Dataset(dataset_name)
    )
    ds.persistent = True
    sample = None
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        image = data["images"][0]
        filepath = str((path.parent / image["file_name"]).resolve())
        if sample is None:
            existing = ds.match(fo.ViewField("filepath") == filepath)
            sample = existing.first() if len(existing) else fo.Sample(filepath=filepath)
        model = path.stem.rsplit("_", 1)[-1]
        sample[f"{model}_predictions"] = _detections(data, (image["height"], image["width"]))
    if sample.dataset is None:
        ds.add_sample(sample)
    else:
        sample.save()
    return (
        f"Sent {len(files)} model result(s) for {Path(sample.filepath).name} to the FiftyOne "
        f"dataset '{dataset_name}' ({len(ds)} images); open it with "
        f"`python -m workbench fiftyone launch {dataset_name}`"
    )
