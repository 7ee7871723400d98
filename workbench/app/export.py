"""Export of the app's results: COCO json per model (and one of a search of many images), and
FiftyOne (in memory) when the integration offers its ``send_app_comparison`` hook, which also
serves the FiftyOne App and links to it (plain Python, no gradio; fiftyone is never imported
here)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from workbench.app.session import Session
from workbench.coco_eval import coco_results
from workbench.inputs import InputError

FIFTYONE_MODULE = "workbench.integrations.fiftyone_app"
FIFTYONE_HOOK = "send_app_comparison"


def export_coco(session) -> tuple[list[str], str]:
    """The last comparison's detections as shown (at the current threshold, duplicates merged
    unless the page shows raw boxes) as one COCO json per model (``images``, ``categories``: the
    positive prompt classes, ``annotations`` with ``score``) and the PNG they refer to: the image
    as the models saw it (after any downscale), so the files together load as a dataset
    (``CocoDetection(json)``). Returns ``(paths, message)``."""
    if not isinstance(session, Session) or session.comparison is None:
        raise InputError("nothing to export yet: run Detect first")
    c = session.comparison
    w, h = c.image.size
    folder = session.folder / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"{Path(c.file_name).stem}.png"
    c.image.save(image_path)
    ids = [None if neg else k + 1 for k, neg in enumerate(c.negative)]
    categories = [{"id": i, "name": n} for i, n in zip(ids, c.names, strict=True) if i]
    paths = []
    for key, dets in c.shown().items():
        results = coco_results({1: dets}, ids)
        annotations = [
            {"id": k + 1, **r, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
            for k, r in enumerate(results)
        ]
        data = {
            "info": {
                "description": f"{key.upper()} detections, workbench app",
                "checkpoint": c.sources[key],
                "score_threshold": c.score_threshold,
                "merge_iou": c.merge_iou,
            },
            "images": [{"id": 1, "file_name": image_path.name, "width": w, "height": h}],
            "categories": categories,
            "annotations": annotations,
        }
        path = folder / f"{Path(c.file_name).stem}_{key}.json"
        path.write_text(json.dumps(data, indent=1))
        paths.append(str(path))
    merged = "raw boxes" if c.merge_iou is None else f"duplicates merged above IoU {c.merge_iou}"
    message = (
        f"Exported {len(paths)} COCO json file(s) at score >= {c.score_threshold:.2f} ({merged})"
    )
    return [*paths, str(image_path)], message + f" and the image they refer to ({w}x{h})"


def save_search_coco(session: Session, coco: dict, model_key: str) -> Path:
    """A search's COCO json of detections (:func:`workbench.annotate.detections_coco`) as
    ``search_<model>.json`` in the session's export folder, replacing the previous search's."""
    folder = session.folder / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"search_{model_key}.json"
    path.write_text(json.dumps(coco, indent=1))
    return path


def fiftyone_hook():
    """``send_app_comparison`` of the FiftyOne integration (image, file name, detections per
    model -> a Markdown message linking to the FiftyOne App), or a string saying why there is
    none. That module imports fiftyone only inside its functions, so looking starts no database
    (and no App server)."""
    if importlib.util.find_spec(FIFTYONE_MODULE) is None:
        return f"FiftyOne export is not in this checkout (`{FIFTYONE_MODULE}` is missing)."
    try:
        module = importlib.import_module(FIFTYONE_MODULE)
    except Exception as err:  # a broken optional integration must not stop the app
        return f"FiftyOne export is unavailable: `{FIFTYONE_MODULE}` failed to import ({err})."
    hook = getattr(module, FIFTYONE_HOOK, None)
    if hook is None:
        return f"FiftyOne export is unavailable: `{FIFTYONE_MODULE}` has no `{FIFTYONE_HOOK}`."
    return hook


def send_to_fiftyone(session, hook=None) -> str:
    """Hand the last comparison (the image as the models saw it, each model's detections at the
    current threshold) to the FiftyOne integration's hook (default: :func:`fiftyone_hook`), in
    memory; returns its message. The default hook starts a local FiftyOne App server on the first
    send and reuses it after (``workbench.integrations.fiftyone_app_server``)."""
    hook = fiftyone_hook() if hook is None else hook
    if isinstance(hook, str):
        return hook + " Download the COCO json instead."
    if not isinstance(session, Session) or session.comparison is None:
        raise InputError("nothing to send to FiftyOne yet: run Detect first")
    c = session.comparison
    shown = c.shown()
    return str(hook(c.image, c.file_name, shown))
