"""Reading a COCO/LVIS json and checking its *structure*, before any dataset object exists.

:func:`load_coco_json` refuses what cannot be repaired with a :class:`DatasetError` that names the
file, the record and the fix; :class:`~workbench.data.coco.CocoDetection` then checks, repairs or
drops single annotations.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from workbench.data.dataset import DatasetError, LoadReport

# Accepted values of a category's "split" key (any case) and the split each one means.
_SPLITS = {"base": "base", "seen": "base", "novel": "novel", "unseen": "novel"}


def _is_int(value: Any, limit: int = 2**63) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -limit < value < limit


def as_id(value: Any) -> int | None:
    """``value`` if it is an integer that fits int64 (bools are not ids), else None."""
    return value if _is_int(value) else None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text ({err}); save the json as UTF-8") from err
    if not text.strip():
        raise DatasetError(f"{path} is empty; re-export or re-download the annotation json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; fix "
            "the file there (a truncated download or a trailing comma?)"
        ) from err
    except (ValueError, RecursionError) as err:
        raise DatasetError(f"{path} cannot be parsed as JSON: {err}") from err


def _expect_objects(source: str, key: str, records: list) -> None:
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise DatasetError(f"{source}: {key}[{i}] is a {kind}, expected an object")


def _check_image(source: str, i: int, img: dict) -> dict:
    """One ``images`` record, with ``file_name`` derived from LVIS' ``coco_url`` if missing."""
    if not _is_int(img.get("id")):
        raise DatasetError(
            f"{source}: images[{i}] has id {img.get('id')!r}; image ids must be integers, "
            "so renumber the images (and their annotations' image_id)"
        )
    img = dict(img)
    url = img.get("coco_url")
    if "file_name" not in img and isinstance(url, str) and "/" in url:
        # LVIS: 'http://images.cocodataset.org/train2017/000000155379.jpg' (as detectron2 does).
        img["file_name"] = "/".join(url.split("/")[-2:])
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        raise DatasetError(
            f"{source}: images[{i}] (id {img['id']}) has file_name {img.get('file_name')!r}; "
            "set it to the image's path relative to the image root"
        )
    for key in ("width", "height"):
        value = img.get(key)
        if isinstance(value, float) and value.is_integer():
            value = img[key] = int(value)
        if not (_is_int(value, 2**31) and value > 0):
            raise DatasetError(
                f"{source}: images[{i}] (id {img['id']}, {img['file_name']}) has {key} {value!r}; "
                "width and height must be positive integers: set them to the image's pixel size "
                "(workbench.data.images.image_size reads it)"
            )
    return img


def _check_category(source: str, i: int, cat: dict) -> dict:
    if not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
        raise DatasetError(
            f"{source}: categories[{i}] has id {cat.get('id')!r} and name {cat.get('name')!r}; "
            "every category needs an integer id and a string name"
        )
    split = cat.get("split")
    if split is not None and (not isinstance(split, str) or split.lower() not in _SPLITS):
        raise DatasetError(
            f"{source}: category {cat['id']} ({cat['name']}) has split {split!r}; use 'base' or "
            "'novel' (or 'seen' / 'unseen'), or remove the key"
        )
    return cat


def _check_unique(source: str, what: str, records: list[dict], fix: str) -> None:
    duplicates = sorted(k for k, n in Counter(r["id"] for r in records).items() if n > 1)
    if duplicates:
        raise DatasetError(f"{source}: duplicate {what} ids {duplicates[:10]}; {fix}")


def _number_annotations(source: str, annotations: list, report: LoadReport | None) -> list[dict]:
    """Give annotations without a usable ``id`` a new one; refuse duplicate ids."""
    # Negative ids count as missing because Target uses -1 for "unknown"; the 2**62 cap keeps
    # the new ids (max + 1, ...) inside int64.
    valid = [a["id"] for a in annotations if _is_int(a.get("id"), 2**62) and a["id"] >= 0]
    fix = "renumber the annotations, or delete their 'id' keys to have ids assigned"
    _check_unique(source, "annotation", [{"id": v} for v in valid], fix)
    next_id = max(valid, default=0) + 1
    numbered = []
    for ann in annotations:
        if not (_is_int(ann.get("id"), 2**62) and ann["id"] >= 0):
            ann = {**ann, "id": next_id}
            next_id += 1
            if report is not None:
                report.add("assigned_annotation_ids")
        numbered.append(ann)
    return numbered


def load_coco_json(source: str | Path | dict, *, report: LoadReport | None = None) -> dict:
    """Read and check a COCO/LVIS json (a path or an already-parsed dict; the input is not mutated).

    Refused with a :class:`DatasetError` naming the file and the fix: missing, empty or malformed
    files (with line and column), a top level that is not an object, missing or mistyped
    ``images`` / ``annotations`` / ``categories``, image records without integer ``id``,
    ``file_name`` or positive ``width`` / ``height``, categories without ``id`` / ``name`` or
    with a ``split`` other than base / novel (seen / unseen), and duplicate image, category or
    annotation ids. Tolerated and kept: extra keys, ``iscrowd``,
    images without annotations, non-contiguous category ids, LVIS ``neg_category_ids`` /
    ``not_exhaustive_category_ids``. Annotations without a non-negative integer ``id`` get new
    ids after the largest one (counted as ``assigned_annotation_ids`` in ``report``).
    Annotation *contents* (bbox, category, image) are checked by :class:`CocoDetection`.
    """
    from_file = isinstance(source, str | os.PathLike)
    name = str(source) if from_file else "<dict>"
    # Anything but a path is taken as already-parsed JSON, so a list is "a list", not a TypeError.
    data = _read_json(Path(source)) if from_file else source
    if not isinstance(data, dict):
        raise DatasetError(
            f"{name}: the top level is a {type(data).__name__}; a COCO json is an object with "
            "'images', 'annotations' and 'categories' lists"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(
            f"{name}: missing key(s) {missing}; a COCO json needs 'images', 'annotations' and "
            "'categories' (use an empty list for none)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{name}: '{key}' is a {type(data[key]).__name__}, expected a list")
        _expect_objects(name, key, data[key])
    images = [_check_image(name, i, img) for i, img in enumerate(data["images"])]
    categories = [_check_category(name, i, c) for i, c in enumerate(data["categories"])]
    _check_unique(name, "image", images, "make image ids unique (and fix annotations' image_id)")
    _check_unique(name, "category", categories, "make category ids unique")
    annotations = _number_annotations(name, data["annotations"], report)
    return {**data, "images": images, "annotations": annotations, "categories": categories}


def canonical_split(category: dict) -> str | None:
    """The split of a checked category record, "base" or "novel"; None when it has none."""
    split = category.get("split")
    return _SPLITS[split.lower()] if isinstance(split, str) else None
