"""Writing a converted dataset: its images under ``out_dir/images/``, one COCO json per split.

The VOC and YOLO converters hand over one record per image (its source path, size and clean
annotations) and the splits; this module numbers them, places the images and writes
``annotations.json`` (every image) and ``{split}.json`` (ids shared by every file), so
``CocoDetection(out_dir / "train.json")`` reads a split and ``data stats`` counts it.

Image names are kept: an image's ``file_name`` is ``images/`` plus its path relative to the
folder that holds all the images (``images/a.jpg`` for one folder, ``images/train/a.jpg`` and
``images/val/a.jpg`` for an ultralytics tree), so no two images can collide and none is renamed.

Nothing is replaced without ``overwrite``: existing json files of those names, or other files
where images go, are refused (an :class:`~workbench.safe_paths.OutputError` naming them, before
anything is written); images already copied or linked from the same source are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from workbench.data.dataset import DatasetWarning, LoadReport
from workbench.safe_paths import refuse_existing, write_atomic


class Conversion(dict):
    """``{json stem: path}`` of the written files (``"annotations"`` and one key per split).

    Attributes:
        summary: ``num_images``, ``num_annotations``, per-category box counts, per-split image and
            box counts, the repair counts, and what the converter adds (e.g. YOLO's
            ``images_without_label_file``).
        report: the repairs, with the first messages naming the annotation file and object.
    """

    def __init__(self, files: dict[str, Path], summary: dict, report: LoadReport) -> None:
        super().__init__(files)
        self.summary = summary
        self.report = report


def image_file_names(paths: list[Path]) -> list[str]:
    """``images/<path relative to the folder holding every image>`` for each of ``paths``."""
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    return [f"images/{Path(os.path.relpath(p, common)).as_posix()}" for p in absolute]


def _already_placed(src: Path, dst: Path, link: bool) -> bool:
    """``dst`` is already the copy (same size and mtime) or the link :func:`_place_image` makes."""
    if link:
        return dst.is_symlink() and dst.readlink() == src.resolve()
    if dst.is_file() and not dst.is_symlink():
        s, d = src.stat(), dst.stat()
        return (s.st_size, int(s.st_mtime)) == (d.st_size, int(d.st_mtime))
    return False


def _place_image(src: Path, dst: Path, link: bool) -> None:
    """Copy (or symlink) ``src`` to ``dst``; an identical existing copy or link is left alone."""
    if _already_placed(src, dst, link):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copy2(src, dst)


def _coco_lists(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """images (ids 1..N in record order) and annotations (ids 1..M in the same order)."""
    images, annotations = [], []
    names = image_file_names([r["image_path"] for r in records])
    for image_id, (record, file_name) in enumerate(zip(records, names, strict=True), start=1):
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": record["width"],
                "height": record["height"],
                **record.get("image_keys", {}),
            }
        )
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ann["category_id"],
                    "bbox": [x, y, w, h],
                    "area": round(w * h, 6),
                    "iscrowd": 0,
                    **{k: v for k, v in ann.items() if k not in ("category_id", "bbox")},
                }
            )
    return images, annotations


def _write_json(path: Path, data: dict) -> None:
    """Write atomically (a reader sees the old file or the new one), with the user's umask."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def write_conversion(
    out_dir: Path,
    records: list[dict],
    categories: list[dict],
    splits: dict[str, set[str]],
    info: dict,
    report: LoadReport,
    *,
    link_images: bool,
    overwrite: bool,
    progress: bool,
) -> Conversion:
    """Place the images and write ``annotations.json`` and one json per split.

    Args:
        records: per image, in output order: ``key`` (what ``splits`` list), ``image_path``,
            ``height``, ``width``, ``annotations`` (``category_id``, ``bbox`` xywh pixels, and
            extra keys kept as they are) and optional ``image_keys`` added to the image record.
        categories: the COCO ``categories`` list.
        splits: ``{split: keys of its images}``; an image may be in several (VOC's trainval).
        info: the json's ``info``; the repair counts and the split name are added.
        report: the converter's repairs; when there are any, one DatasetWarning sums them up.
    """
    images, annotations = _coco_lists(records)
    pairs = list(zip(records, images, strict=True))
    places = [(r["image_path"], out_dir / im["file_name"]) for r, im in pairs]
    if not overwrite:
        refuse_existing(
            [out_dir / f"{name}.json" for name in ("annotations", *splits)]
            + [dst for src, dst in places if not _already_placed(src, dst, link_images)],
            setting="--out",
        )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for src, dst in tqdm(places, desc="images", disable=not progress):
        _place_image(src, dst, link_images)
    info = {**info, "repairs": dict(sorted(report.counts.items()))}
    files, sizes = {}, {}
    for split, keys in [("annotations", None), *splits.items()]:
        keep = {im["id"] for r, im in pairs if keys is None or r["key"] in keys}
        subset = {
            "info": {**info, "split": "all" if keys is None else split},
            "licenses": [],
            "images": [im for im in images if im["id"] in keep],
            "annotations": [a for a in annotations if a["image_id"] in keep],
            "categories": categories,
        }
        files[split] = out_dir / f"{split}.json"
        _write_json(files[split], subset)
        sizes[split] = {"images": len(keep), "annotations": len(subset["annotations"])}
    per_category = Counter(a["category_id"] for a in annotations)
    summary = {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "categories": {c["name"]: per_category[c["id"]] for c in categories},
        "splits": sizes,
        "repairs": info["repairs"],
    }
    if report.counts:
        first = "\n  ".join(report.messages[:3])
        warnings.warn(
            f"{info['source']}: repaired while converting {summary['repairs']}; first:\n"
            f"  {first}\nAll are in the result's .report.",
            DatasetWarning,
            stacklevel=3,
        )
    return Conversion(files, summary, report)
