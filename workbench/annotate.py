"""Annotating a folder: one COCO json of detections for every image under it, resumable.

``workbench predict CHECKPOINT FOLDER --out DETS.json`` runs here. The prompts are embedded once
into a :class:`~workbench.prompt_bank.PromptBank` and applied to every image, ``batch_size``
images through one backbone and decoder call (:meth:`Predictor.predict_batch`). Each image's
detections are what the app shows (:func:`~workbench.postprocess.shown_detections`: at least
``min_score``, same-class duplicates merged), at most ``max_per_class`` per class. The app's
"Search many images" tab takes the same path (:func:`detect_images`, :func:`detection_line`,
:func:`detections_coco`) over uploaded images.

Images: every file under the folder, recursively, whose suffix is an image one in any case
(``.jpg .jpeg .png .bmp .tif .tiff .webp``), hidden files skipped, in sorted path order. An image
that cannot be read is skipped, counted and named; the run goes on.

Resuming: each finished image is one line appended to ``DETS.json.partial.jsonl`` (flushed and
fsynced), after a first line holding the run's settings. A run started again with the same
settings skips the images already there; other settings are refused with the differences named
(``force`` discards the old progress). A line cut short by a kill is dropped. The json is written
atomically at the end and the partial file removed.

The json: ``images`` (``file_name`` relative to the folder, ``width``, ``height``, ``id``),
``categories`` (one per reported class, ids from 1 in prompt order) and ``annotations`` (``bbox``
xywh pixels, ``score``, ``category_id``, ``area``, ``iscrowd`` 0). ``CocoDetection`` reads it as a
labels file (scores ignored) with ``image_root`` the folder; ``workbench eval --detections``
scores it against a ground-truth json of the same images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from workbench.data.dataset import DatasetError
from workbench.data.images import read_image
from workbench.data.user_folders import IMAGE_SUFFIXES, files_with_suffix
from workbench.inputs import InputError
from workbench.postprocess import shown_detections
from workbench.predictor import Predictor
from workbench.prompt_bank import PromptBank
from workbench.safe_paths import OutputError, write_atomic
from workbench.types import Detections

PARTIAL_SUFFIX = ".partial.jsonl"


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, any-case suffix, hidden files skipped),
    sorted by path; an InputError when there is none."""
    folder = Path(folder)
    found = files_with_suffix(folder, IMAGE_SUFFIXES, recursive=True)
    if not found:
        raise InputError(
            f"{folder} holds no images (searched recursively for {' '.join(IMAGE_SUFFIXES)}, "
            "any case); point predict at the folder of your images"
        )
    return found


def bank_digest(bank: PromptBank) -> str:
    """A short hash of what a bank asks for (names, negatives, embeddings to 1e-4): equal for
    the same prompts embedded by the same weights."""
    h = hashlib.sha256(json.dumps([bank.names, bank.negative]).encode())
    h.update((bank.embeddings.float().cpu() * 1e4).round().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def partial_path(out: str | Path) -> Path:
    """Where the progress of a run writing ``out`` is kept."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def cap_per_class(dets: Detections, max_per_class: int | None) -> Detections:
    """The best ``max_per_class`` detections of each prompt (``dets`` are best first)."""
    if max_per_class is None:
        return dets
    seen: dict[int, int] = {}
    keep = torch.zeros(len(dets), dtype=torch.bool)
    for i, p in enumerate(dets.prompt_index.tolist()):
        seen[p] = seen.get(p, 0) + 1
        keep[i] = seen[p] <= max_per_class
    return dets.select(keep)


@dataclass(frozen=True)
class AnnotateSummary:
    """What a run did: images found, finished by this run, finished before (resumed), skipped
    (unreadable, named with the reason), and the detections written."""

    found: int
    done_now: int
    done_before: int
    skipped: dict[str, str]
    detections: int
    out: Path


def annotate_folder(
    predictor: Predictor,
    bank: PromptBank,
    folder: str | Path,
    out: str | Path,
    *,
    min_score: float,
    merge_iou: float | None,
    max_per_class: int | None = None,
    batch_size: int = 1,
    settings: dict | None = None,
    force: bool = False,
    progress: bool = True,
) -> AnnotateSummary:
    """Detect ``bank``'s classes in every image of ``folder``; write the COCO json ``out``.

    Args:
        settings: what else defines the run (checkpoint, sizes, ...), JSON-ready; with the
            thresholds, the folder and :func:`bank_digest` it decides whether a partial run may
            be resumed.
        force: discard progress kept with other settings instead of refusing.
    """
    folder, out = Path(folder), Path(out)
    files = image_files(folder)
    names = [f.relative_to(folder).as_posix() for f in files]
    run = {
        **(settings or {}),
        "folder": str(folder.resolve()),
        "prompts": bank_digest(bank),
        "classes": list(bank.names),
        "min_score": min_score,
        "merge_iou": merge_iou,
        "max_per_class": max_per_class,
    }
    sidecar = partial_path(out)
    resumed = _resume(sidecar, run, force)
    done = dict(resumed or {})
    todo = [(f, n) for f, n in zip(files, names, strict=True) if n not in done]
    done_before = sum(n in done for n in names)
    bar = tqdm(total=len(files), initial=done_before, desc="predict", disable=not progress)
    with sidecar.open("a", encoding="utf-8") as log:
        if resumed is None:
            _append(log, {"settings": run})
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for name, line in _predict_chunk(predictor, bank, chunk, run):
                _append(log, line)
                done[name] = line
                bar.update(1)
    bar.close()
    coco = detections_coco([done[n] for n in names if n in done], bank, run)
    write_atomic(out, json.dumps(coco, indent=1))
    sidecar.unlink()
    skipped = {n: done[n]["error"] for n in names if "error" in done[n]}
    return AnnotateSummary(
        len(files), len(todo), done_before, skipped, len(coco["annotations"]), out
    )


def _predict_chunk(predictor, bank, chunk: Sequence[tuple[Path, str]], run: dict):
    """``(name, line)`` per image of the chunk: its detections, or why it was skipped."""
    images, read = [], []
    for path, name in chunk:
        try:
            images.append(read_image(path))
            read.append(name)
        except DatasetError as err:
            yield name, {"file": name, "error": " ".join(str(err).split())}
    if not images:
        return
    found = detect_images(
        predictor,
        bank,
        images,
        min_score=run["min_score"],
        merge_iou=run["merge_iou"],
        max_per_class=run["max_per_class"],
    )
    for name, image, dets in zip(read, images, found, strict=True):
        yield name, detection_line(name, dets, int(image.shape[-1]), int(image.shape[-2]))


def detect_images(
    predictor: Predictor,
    bank: PromptBank,
    images: Sequence[Tensor],
    *,
    min_score: float,
    merge_iou: float | None,
    max_per_class: int | None = None,
    max_detections: int | None = None,
) -> list[Detections]:
    """Each image's detections as shown (see the module docstring), the images ``[3, H, W]``
    float RGB in [0, 1] through one batched call; boxes in pixels of each image.
    ``max_detections``: top-K per image before thresholding (None: the predictor's own)."""
    cap = {} if max_detections is None else {"max_detections": max_detections}
    raw = predictor.predict_batch(
        images, bank, score_threshold=min_score, batch_size=len(images), **cap
    )
    return [cap_per_class(shown_detections(d, min_score, merge_iou), max_per_class) for d in raw]


def detection_line(
    name: str, dets: Detections, width: int, height: int, to_file: float = 1.0
) -> dict:
    """One image's entry of the json: its name, size (pixels of the file) and detections, each
    box ``[x0, y0, x1, y1]`` times ``to_file`` (from the searched image's pixels to the file's,
    for an image read downscaled), rounded to 0.01 px; scores to 1e-5."""
    boxes = [[round(v * to_file, 2) for v in box] for box in dets.boxes_xyxy.tolist()]
    return {
        "file": name,
        "height": height,
        "width": width,
        "detections": [
            {"name": n, "box_xyxy": b, "score": round(float(s), 5)}
            for n, b, s in zip(dets.names, boxes, dets.scores.tolist(), strict=True)
        ],
    }


def _append(log, record: dict) -> None:
    """One line, on disk before the next image starts (a kill loses at most the image in
    flight)."""
    log.write(json.dumps(record) + "\n")
    log.flush()
    os.fsync(log.fileno())


def _resume(sidecar: Path, run: dict, force: bool) -> dict[str, dict] | None:
    """The finished images' lines by name from a partial file with the same settings; None
    (and no file) to start afresh."""
    if not sidecar.exists():
        return None
    raw = sidecar.read_bytes()
    lines = raw.split(b"\n")
    good, records = 0, []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if k < len(lines) - 1:  # not the line a kill cut short
                raise OutputError(
                    f"{sidecar} (progress of an earlier run) is damaged at line {k + 1}; pass "
                    "--force to start over"
                ) from None
            break
        good += len(line) + 1
    if not records:  # killed while writing the settings line
        sidecar.unlink()
        return None
    saved = records[0].get("settings") if isinstance(records[0], dict) else None
    if saved != run:
        if not force:
            raise OutputError(_differences(sidecar, saved, run))
        sidecar.unlink()
        return None
    with sidecar.open("r+b") as f:  # drop a line a kill cut short
        f.truncate(good)
    return {r["file"]: r for r in records[1:]}


def _differences(sidecar: Path, saved: dict | None, run: dict) -> str:
    if not isinstance(saved, dict):
        return f"{sidecar} holds no run settings; pass --force to start over"
    keys = sorted(set(saved) | set(run), key=lambda k: (k not in run, k))
    shown = [f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in keys if saved.get(k) != run.get(k)]
    return (
        f"{sidecar} holds the progress of a run with other settings ({'; '.join(shown)}); run "
        "the same command to resume it, or pass --force to discard it and start over"
    )


def detections_coco(
    lines: Sequence[dict],
    bank: PromptBank,
    run: dict,
    description: str = "detections by workbench predict",
) -> dict:
    """The COCO json of finished images' lines (skipped images left out), ids from 1; ``run``
    (the settings) and ``description`` go to its ``info``."""
    names = [n for n, neg in zip(bank.names, bank.negative, strict=True) if not neg]
    category_of = {n: k for k, n in enumerate(dict.fromkeys(names), 1)}
    images, annotations = [], []
    for line in (x for x in lines if "error" not in x):
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": line["file"],
                "width": line["width"],
                "height": line["height"],
            }
        )
        for det in line["detections"]:
            x0, y0, x1, y1 = det["box_xyxy"]
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_of[det["name"]],
                    "bbox": [x0, y0, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "score": det["score"],
                }
            )
    return {
        "info": {"description": description, "settings": run},
        "images": images,
        "categories": [{"id": k, "name": n} for n, k in category_of.items()],
        "annotations": annotations,
    }
