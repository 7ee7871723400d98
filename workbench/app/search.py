"""Search many images: the main tab's prompts (or a saved bank) applied by one model to a set of
uploaded or bundled images, with each image drawn, counts per class and image, and one COCO json
of the detections (plain Python, no gradio).

The prompts are read as Detect reads them (boxes on the target and reference images, plus the
chosen bank) and embedded once into a PromptBank; the images then go through the folder
command's batched path (:func:`workbench.annotate.detect_images`), a few at a time, so each
image's detections are what the page shows: at the current score threshold, same-class
duplicates merged unless the page shows every raw box. An image that cannot be read is skipped
and named; the rest go on. The json is :func:`workbench.annotate.detections_coco`'s, in the
files' pixels, so ``workbench eval --detections`` scores it against ground truth by file name.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workbench.annotate import detect_images, detection_line, detections_coco
from workbench.app import export, render
from workbench.app.handlers import prompt_bank
from workbench.app.inputs import load_image, read_request
from workbench.app.models import Models, ModelSlot, Settings
from workbench.app.session import Session
from workbench.data.images import pil_to_rgb_tensor
from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU
from workbench.prompt_bank import PromptBank

SEARCH_BATCH = 4  # images per backbone call: the batched path's gain, bounded memory
NO_PROMPTS = (
    "no prompts to search for: draw a box around an example object on the Target image tab (or "
    "the reference image), or choose a saved prompt bank under Prompt banks"
)


@dataclass
class SearchView:
    """What the page shows of a search: each image drawn with its caption (counts per class),
    the table of counts per image (a last row of totals), the json's path and the status."""

    gallery: list[tuple[str, str]]
    headers: list[str]
    rows: list[list]
    json_path: str
    status: str


def search_files(uploads, use_examples: bool, examples: dict) -> list[tuple[str, str]]:
    """``(path, name)`` of every image to search: the uploads (gradio file values: paths or
    ``{"path", "orig_name"}`` dicts) and, with ``use_examples``, the bundled examples."""
    files = []
    uploads = [uploads] if isinstance(uploads, str | dict) else uploads or []
    for item in uploads:
        path = item.get("path") if isinstance(item, dict) else item
        if path:
            name = item.get("orig_name") if isinstance(item, dict) else None
            files.append((str(path), str(name or Path(str(path)).name)))
    if use_examples:
        files += [(str(e.image_path), e.image_path.name) for e in examples.values()]
    return files


def check_count(images: int, cap: int) -> None:
    """A user error unless there are between 1 and ``cap`` images to search."""
    if not images:
        raise InputError("no images to search: upload images, or tick 'use the example images'")
    if images > cap:
        raise InputError(
            f"{images} images: the app searches at most {cap} at once; search them in parts, or "
            "save the prompts as a bank and run `python -m workbench predict CHECKPOINT FOLDER "
            "--bank BANK --out DETS.json` on their folder"
        )


def search_bank(slot: ModelSlot, target, reference, bank_name, session: Session, settings):
    """``(bank, notices)``: the classes ``slot``'s model searches for, read as Detect reads them
    and embedded once (boxes on the target image on it, reference boxes on the reference)."""
    if not bank_name and not _has_boxes(target) and not _has_boxes(reference):
        raise InputError(NO_PROMPTS)
    request = read_request(target, reference, bank_name, settings, need_target=False)
    on_target = request.target is not None and request.target.boxes
    encoded = slot.predictor.encode(request.target.image) if on_target else None
    return prompt_bank(slot, request, session, encoded), request.notices


def _has_boxes(payload) -> bool:
    return isinstance(payload, dict) and bool(payload.get("boxes"))


def search_images(
    models: Models,
    session,
    uploads,
    use_examples: bool,
    model_key: str,
    prompts: tuple,
    score_threshold: float,
    settings: Settings,
    examples: dict,
    progress=None,
    *,
    merge: bool = True,
) -> tuple[Session, SearchView, list[str]]:
    """Search every image for the prompts (``(target, reference, bank_name)``, the main tab's
    values) with the ``model_key`` model; ``progress(fraction, text)`` hears each batch. Returns
    ``(session, SearchView, notices)``."""
    session = session if isinstance(session, Session) else Session()
    files = search_files(uploads, use_examples, examples)
    check_count(len(files), settings.max_search_images)
    slot = models.get(model_key)
    if not slot.available:
        raise InputError(f"the {slot.title} model is not loaded: {slot.error}")
    bank, notices = search_bank(slot, *prompts, session, settings)
    run = {
        "model": slot.key,
        "checkpoint": slot.source,
        "min_score": float(score_threshold),
        "merge_iou": MERGE_IOU if merge else None,
        "max_detections": settings.max_detections,
        "max_side": settings.max_side,
    }
    folder = session.folder / "search"
    shutil.rmtree(folder, ignore_errors=True)  # the previous search's drawings
    folder.mkdir(parents=True)
    colors = [session.color(n, neg) for n, neg in zip(bank.names, bank.negative, strict=True)]
    lines, drawings, skipped = [], [], {}
    for start in range(0, len(files), SEARCH_BATCH):
        if progress is not None:
            progress(start / len(files), f"{slot.title}: image {start + 1} of {len(files)}")
        chunk = files[start : start + SEARCH_BATCH]
        found = _search_chunk(slot, bank, chunk, run, colors, folder / f"{start:03d}")
        for name, item in found:
            if isinstance(item, str):
                skipped[name] = item
            else:
                lines.append(item[0])
                drawings.append(item[1])
    if not lines:
        raise InputError("none of the images could be read: " + _named(skipped))
    coco = detections_coco(lines, bank, run, description=f"{slot.title} detections, workbench app")
    path = export.save_search_coco(session, coco, slot.key)
    names = [c["name"] for c in coco["categories"]]
    gallery = [
        (d, f"{line['file']}: {describe_counts(line, names)}")
        for d, line in zip(drawings, lines, strict=True)
    ]
    headers, rows = count_table(lines, names)
    status = describe_search(slot, lines, coco, run, skipped)
    return session, SearchView(gallery, headers, rows, str(path), status), notices


def _search_chunk(slot, bank: PromptBank, chunk, run: dict, colors: list, prefix: Path):
    """``(name, result)`` per file of ``chunk``: why it was skipped (a string), or its json line
    and its drawing (saved as ``<prefix>_<k>_<stem>.png``)."""
    read = []
    for path, name in chunk:
        try:
            image, scale, _ = load_image(path, name, run["max_side"])
            read.append((name, image, scale))
        except InputError as err:
            yield name, str(err).removeprefix(name).strip()
    if not read:
        return
    tensors = [pil_to_rgb_tensor(image) for _, image, _ in read]
    found = detect_images(
        slot.predictor,
        bank,
        tensors,
        min_score=run["min_score"],
        merge_iou=run["merge_iou"],
        max_detections=run["max_detections"],
    )
    for k, ((name, image, scale), dets) in enumerate(zip(read, found, strict=True)):
        size = (round(image.width / scale), round(image.height / scale))
        line = detection_line(name, dets, *size, to_file=1.0 / scale)
        drawing = prefix.with_name(f"{prefix.name}_{k}_{Path(name).stem}.png")
        render.draw_found(image, dets, colors).save(drawing)
        yield name, (line, str(drawing))


def describe_counts(line: dict, names: list[str]) -> str:
    """``"5 RBC, 1 WBC"``: one image's count of each class found (``names``: the classes in
    prompt order), or ``"nothing found"``."""
    found = Counter(d["name"] for d in line["detections"])
    return ", ".join(f"{found[n]} {n}" for n in names if found[n]) or "nothing found"


def count_table(lines: list[dict], names: list[str]) -> tuple[list[str], list[list]]:
    """``(headers, rows)``: one row per image (its name, its count of each class of ``names``,
    its total), then a row of totals."""
    rows = []
    for line in lines:
        found = Counter(d["name"] for d in line["detections"])
        counts = [found[n] for n in names]
        rows.append([line["file"], *counts, sum(counts)])
    totals = [sum(r[k] for r in rows) for k in range(1, len(names) + 2)]
    return ["image", *names, "all classes"], [*rows, ["total", *totals]]


def describe_search(slot: ModelSlot, lines, coco: dict, run: dict, skipped: dict) -> str:
    """The status line: ``"12 images, 87 detections (80 RBC, 7 WBC) by SFT at score >= 0.20,
    duplicates merged; skipped: bad.jpg (is not an image ...)"``."""
    per_class = Counter(a["category_id"] for a in coco["annotations"])
    counts = ", ".join(f"{per_class[c['id']]} {c['name']}" for c in coco["categories"])
    merging = "duplicates merged" if run["merge_iou"] is not None else "every raw box"
    found = f"{_count(len(lines), 'image')}, {_count(len(coco['annotations']), 'detection')}"
    text = f"{found} ({counts}) by {slot.title} at score >= {run['min_score']:.2f}, {merging}"
    return text + (f"; skipped: {_named(skipped)}" if skipped else "")


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _named(skipped: dict[str, str]) -> str:
    return "; ".join(f"{name} ({reason})" for name, reason in skipped.items())
