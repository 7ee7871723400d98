"""The app's "Send to FiftyOne": its last comparison, in memory, into a persistent FiftyOne dataset.

:func:`add_app_comparison` stores the searched image once in the dataset's media folder (named by
its content, so sending the same image again updates its sample instead of adding one) and sets
one ``<model>_predictions`` field per model, so a user can open the App on everything they sent.
:func:`send_app_comparison` (the app's hook) also shows the dataset in this process's FiftyOne App
server (:mod:`~workbench.integrations.fiftyone_app_server`) and returns links to it. fiftyone is
imported inside the functions only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from workbench.inputs import InputError
from workbench.integrations import fiftyone_app_server
from workbench.integrations.fiftyone_labels import detection_labels
from workbench.types import Detections

APP_DATASET = "workbench-app"


def _store_image(image: Image.Image, file_name: str, folder: Path) -> Path:
    """``folder/<stem>-<content hash>.png``, written once (atomically)."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()
    path = folder / f"{Path(file_name).stem}-{digest[:12]}.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
        os.close(fd)
        image.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path.resolve()


def add_app_comparison(
    image: Image.Image,
    file_name: str,
    detections: Mapping[str, Detections],
    *,
    dataset_name: str = APP_DATASET,
    media_dir: str | Path | None = None,
    show_in_app: bool = False,
) -> str:
    """Add ``image`` (the app's searched image, as the models saw it) to ``dataset_name`` with
    each model's ``detections`` (absolute xyxy pixels of ``image``) as ``<model>_predictions``;
    returns a message saying where they are. The image is stored in ``media_dir`` (default: the
    dataset's folder under FiftyOne's ``default_dataset_dir``), which outlives the app's session.

    With ``show_in_app``, the dataset is also shown in this process's FiftyOne App server
    (started on the first call, reused after; see :mod:`fiftyone_app_server` for its port) and
    the message is Markdown linking to the sample, opened in the App, and to the dataset.
    """
    ds, sample = _add_sample(image, file_name, detections, dataset_name, media_dir)
    sent = f"Sent {len(detections)} model result(s) for {file_name} to the FiftyOne dataset"
    images = f"{len(ds)} image" + ("" if len(ds) == 1 else "s")
    if not show_in_app:
        return (
            f"{sent} '{dataset_name}' ({images}); open it with "
            f"`python -m workbench fiftyone launch {dataset_name}`"
        )
    base = fiftyone_app_server.show(ds)
    this = fiftyone_app_server.app_url(base, ds.name, sample.id)
    return (
        f"{sent} '{ds.name}' ({images}): [open this image in the FiftyOne App]({this}) or "
        f"[the whole dataset]({fiftyone_app_server.app_url(base, ds.name)}). "
        "The App server stops when this app does."
    )


def send_app_comparison(image: Image.Image, file_name: str, detections, **where) -> str:
    """The app's hook: :func:`add_app_comparison` shown in the FiftyOne App, with links."""
    return add_app_comparison(image, file_name, detections, show_in_app=True, **where)


def _add_sample(image, file_name, detections, dataset_name, media_dir):
    """``(dataset, sample)``: ``image``'s sample of ``dataset_name`` with ``detections`` set."""
    if not detections:
        raise InputError("nothing to send to FiftyOne: run Detect first")
    import fiftyone as fo

    folder = Path(media_dir or Path(fo.config.default_dataset_dir) / dataset_name)
    filepath = str(_store_image(image, file_name, folder))
    ds = (
        fo.load_dataset(dataset_name)
        if fo.dataset_exists(dataset_name)
        else fo.Dataset(dataset_name)
    )
    ds.persistent = True
    existing = ds.match(fo.ViewField("filepath") == filepath)
    sample = existing.first() if len(existing) else fo.Sample(filepath=filepath)
    for model, dets in detections.items():
        sample[f"{model}_predictions"] = detection_labels(dets)
    if sample.dataset is None:
        ds.add_sample(sample)
    else:
        sample.save()
    return ds, sample
