"""Splitting one COCO json into seeded ``train`` / ``val`` / ``test`` jsons.

Every image lands in exactly one split; image, annotation and category records are copied as
they are (ids kept), so the split files reference the same image files. ``file_name`` stays
valid from the output folder: unchanged when it is the json's folder, else rewritten relative
to it (absolute names are kept).

Stratified lightly, so a rare category does not end up in one split only: each image belongs
to its rarest category (the one on the fewest images; images without boxes form their own
group); groups are laid end to end, each shuffled by the seed, and each split takes evenly
spaced positions along that sequence, so every group is divided in the asked proportions to
within one image. Sizes: ``round(fraction * images)``, at least one image for a fraction
above 0. The same json and seed give byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

from workbench.data.coco_json import as_id, load_coco_json
from workbench.data.dataset import DatasetError
from workbench.safe_paths import (
    check_output_file,
    refuse_existing,
    writable_folder,
    write_atomic,
)


class SplitError(ValueError):
    """Fractions that cannot split a dataset; the message names them and says how to fix it."""


class SplitResult(dict):
    """``{split: path}`` of the written jsons, with ``.summary``: per split, ``images``,
    ``annotations`` and ``categories_without_boxes`` (names with no box in that split)."""

    def __init__(self, files: dict[str, Path], summary: dict) -> None:
        super().__init__(files)
        self.summary = summary


def check_fractions(val: float, test: float) -> None:
    """Each fraction in [0, 1) and their sum below 1, else a :class:`SplitError`."""
    for name, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise SplitError(f"--{name} {value} must lie in [0, 1): the fraction of images in it")
    if val + test >= 1.0:
        raise SplitError(
            f"--val {val} and --test {test} sum to {val + test:g}, leaving no images for train; "
            "make their sum less than 1"
        )


def _sizes(n_images: int, val: float, test: float, source: Path) -> tuple[int, int]:
    """``(val images, test images)``: rounded, at least one for a fraction above 0."""
    n_val, n_test = (max(round(f * n_images), 1 if f > 0 else 0) for f in (val, test))
    if n_val + n_test >= n_images:
        raise SplitError(
            f"{source} has {n_images} images: too few for --val {val} and --test {test} to leave "
            "one for train; lower the fractions (or set one to 0)"
        )
    return n_val, n_test


def _stratified_order(data: dict, seed: int) -> list[int]:
    """Image ids grouped by their rarest category, each group shuffled by ``seed``."""
    cats_of: dict[int, set[int]] = {im["id"]: set() for im in data["images"]}
    for ann in data["annotations"]:  # contents are unchecked: CocoDetection checks them later
        image_id, category_id = as_id(ann.get("image_id")), as_id(ann.get("category_id"))
        if image_id in cats_of and category_id is not None:
            cats_of[image_id].add(category_id)
    images_with = Counter(c for cats in cats_of.values() for c in cats)
    groups: dict[tuple, list[int]] = {}
    for image_id in sorted(cats_of):
        cats = cats_of[image_id]
        rarest = min(cats, key=lambda c: (images_with[c], c)) if cats else None
        key = (0, 0, 0) if rarest is None else (1, images_with[rarest], rarest)
        groups.setdefault(key, []).append(image_id)
    rng = random.Random(seed)
    order = []
    for key in sorted(groups):
        rng.shuffle(groups[key])
        order += groups[key]
    return order


def _spread(count: int, total: int) -> list[bool]:
    """``total`` flags, ``count`` of them set, evenly spaced (exactly ``count``: the floors of
    ``i * count / total`` step up ``count`` times)."""
    return [(i + 1) * count // total > i * count // total for i in range(total)]


def _assign(order: list[int], n_val: int, n_test: int) -> dict[str, list[int]]:
    """Test takes evenly spaced positions of ``order``, val evenly spaced ones of the rest."""
    is_test = _spread(n_test, len(order))
    rest = [i for i, t in zip(order, is_test, strict=True) if not t]
    is_val = _spread(n_val, len(rest))
    return {
        "train": sorted(i for i, v in zip(rest, is_val, strict=True) if not v),
        "val": sorted(i for i, v in zip(rest, is_val, strict=True) if v),
        "test": sorted(i for i, t in zip(order, is_test, strict=True) if t),
    }


def _file_name(name: str, json_dir: Path, out_dir: Path) -> str:
    """``name`` (relative to ``json_dir``) as seen from ``out_dir``."""
    if os.path.isabs(name) or json_dir.resolve() == out_dir.resolve():
        return name
    return Path(os.path.relpath(json_dir.resolve() / name, out_dir.resolve())).as_posix()


def split_coco(
    json_path: str | Path,
    out_dir: str | Path,
    *,
    val: float = 0.2,
    test: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> SplitResult:
    """Write ``out_dir/{train,val,test}.json`` (a split whose fraction is 0 is not written).

    Refused before anything is written: fractions outside [0, 1) or summing to 1 or more
    (:class:`SplitError`), too few images, an output that exists (unless ``overwrite``) and an
    output that is the input json (always); see :mod:`workbench.safe_paths`.
    """
    json_path, out_dir = Path(json_path), Path(out_dir)
    check_fractions(val, test)
    data = load_coco_json(json_path)
    if not data["images"]:
        raise DatasetError(f"{json_path} has no images to split")
    n_val, n_test = _sizes(len(data["images"]), val, test, json_path)
    wanted = {"train": 1.0 - val - test, "val": val, "test": test}
    # The input is never replaced (whatever ``overwrite`` says); other files only when asked.
    outputs = {
        name: check_output_file(out_dir / f"{name}.json", force=True, inputs=[json_path])
        for name, fraction in wanted.items()
        if fraction > 0
    }
    if not overwrite:
        refuse_existing(outputs.values(), setting="--out")
    parts = _assign(_stratified_order(data, seed), n_val, n_test)
    writable_folder(out_dir, "--out")
    files, summary = {}, {}
    for name, path in outputs.items():
        keep = set(parts[name])
        images = [
            {**im, "file_name": _file_name(im["file_name"], json_path.parent, out_dir)}
            for im in data["images"]
            if im["id"] in keep
        ]
        annotations = [a for a in data["annotations"] if as_id(a.get("image_id")) in keep]
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        subset = {
            **data,
            "info": {**info, "split": name, "split_of": str(json_path.resolve()), "seed": seed},
            "images": images,
            "annotations": annotations,
        }
        files[name] = write_atomic(
            path, json.dumps(subset, ensure_ascii=False, separators=(",", ":"))
        )
        boxed = {as_id(a.get("category_id")) for a in annotations}
        summary[name] = {
            "images": len(images),
            "annotations": len(annotations),
            "categories_without_boxes": [
                c["name"] for c in data["categories"] if c["id"] not in boxed
            ],
        }
    return SplitResult(files, summary)
