"""Pascal VOC (``Annotations/*.xml`` + ``JPEGImages/``) to COCO json, read by CocoDetection.

Box convention: VOC stores 1-based, inclusive pixel indices; COCO boxes are continuous
coordinates where pixel ``i`` covers ``[i, i + 1)``. As detectron2 does, a VOC box becomes
``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax``, so a single-pixel box (``xmin == xmax``)
is a 1x1 box and is kept. Boxes are clipped to the image; inverted ones (``xmax < xmin``) dropped.

Repairs, counted in the returned ``report`` and summed up in one :class:`DatasetWarning`:
``clipped_boxes``, ``dropped_inverted``, ``dropped_outside``, ``dropped_invalid`` (missing name
or non-numeric coordinates), ``size_from_image`` (``<size>`` missing or not positive: the image
header is used), ``size_corrected`` (``<size>`` disagrees with the image header, which wins
because the boxes must fit the pixels a model will see), and ``split_ids_without_annotation``.
Unrepairable inputs (malformed XML, a missing or unreadable image) raise a DatasetError.
``difficult`` and ``truncated`` are kept as extra annotation keys (not as ``iscrowd``: VOC
evaluation ignores difficult boxes, but training on them is detectron2's default too).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from workbench.data.dataset import DatasetError, DatasetWarning, LoadReport
from workbench.data.images import image_size
from workbench.safe_paths import refuse_existing, write_atomic

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_BOX_CONVENTION = (
    "VOC 1-based inclusive pixel indices to COCO continuous pixels as detectron2 does: "
    "x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax"
)


class VocConversion(dict):
    """``{json stem: path}`` of the written files (``"annotations"`` and one key per split).

    Attributes:
        summary: ``num_images``, ``num_annotations``, per-category box counts, per-split image and
            box counts, and the repair counts.
        report: the repairs, with the first messages naming the XML file and object.
    """

    def __init__(self, files: dict[str, Path], summary: dict, report: LoadReport) -> None:
        super().__init__(files)
        self.summary = summary
        self.report = report


def _find_image(xml_path: Path, root: ET.Element, image_dir: Path) -> Path:
    """The image an XML describes: its ``<filename>``, else the XML's stem with an image suffix."""
    # Only the name part: a <filename> must never point outside JPEGImages/.
    name = Path((root.findtext("filename") or "").strip()).name
    candidates = [image_dir / name] if name else []
    candidates += [image_dir / (xml_path.stem + s) for s in _IMAGE_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(
        f"{xml_path}: its image {candidates[0]} does not exist; put the image in {image_dir} or "
        "delete the annotation file"
    )


def _image_hw(
    xml_path: Path, root: ET.Element, image_path: Path, report: LoadReport
) -> tuple[int, int]:
    """``(height, width)``: the image header's, noting when ``<size>`` is missing or wrong.

    The displayed size (EXIF orientation applied) unless ``<size>`` is the stored size of an
    image its EXIF tag turns: then the boxes were drawn on the stored grid, and the json says so
    (CocoDetection reads such an image unturned)."""
    try:
        header_hw = image_size(image_path)
        stored_hw = image_size(image_path, apply_exif=False)
    except DatasetError as err:
        raise DatasetError(f"{xml_path}: {err}") from err
    try:
        xml_hw = (int(root.findtext("size/height")), int(root.findtext("size/width")))
    except (TypeError, ValueError):
        xml_hw = (0, 0)
    if min(xml_hw) <= 0:
        report.add("size_from_image", f"{xml_path.name}: no valid <size>; used the image's")
    elif xml_hw == stored_hw:
        return stored_hw
    elif xml_hw != header_hw:
        report.add(
            "size_corrected",
            f"{xml_path.name}: <size> says height x width {xml_hw}, the image is {header_hw}; "
            "used the image's",
        )
    return header_hw


def _flag(obj: ET.Element, tag: str) -> int:
    try:
        return int(float(obj.findtext(tag) or 0))
    except ValueError:
        return 0


def _parse_object(
    where: str, obj: ET.Element, size_hw: tuple[int, int], report: LoadReport
) -> dict | None:
    """One ``<object>`` as ``{name, bbox (xywh), difficult, truncated}``; None if dropped."""
    name = (obj.findtext("name") or "").strip()
    try:
        corners = [float(obj.findtext(f"bndbox/{k}")) for k in _CORNERS]
    except (TypeError, ValueError):  # a missing tag gives None, a non-number a ValueError
        corners = []
    if not name or len(corners) != 4 or not all(map(math.isfinite, corners)):
        report.add("dropped_invalid", f"{where}: no <name> or no numeric <bndbox>; dropped")
        return None
    xmin, ymin, xmax, ymax = corners
    if xmax < xmin or ymax < ymin:
        box = (xmin, ymin, xmax, ymax)
        report.add(
            "dropped_inverted", f"{where}: inverted box (xmin,ymin,xmax,ymax)={box}; dropped"
        )
        return None
    height, width = size_hw
    x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        report.add("dropped_outside", f"{where}: box outside the {width}x{height} image; dropped")
        return None
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        report.add("clipped_boxes", f"{where}: box beyond the {width}x{height} image; clipped")
    return {
        "name": name,
        "bbox": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        "difficult": _flag(obj, "difficult"),
        "truncated": _flag(obj, "truncated"),
    }


def _parse_xml(xml_path: Path, image_dir: Path, report: LoadReport) -> dict:
    """One annotation file as ``{stem, image_path, height, width, objects}``."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        # ParseError's text gives the line and column, e.g. "mismatched tag: line 5, column 2".
        raise DatasetError(f"{xml_path}: malformed XML ({err}); fix the file or delete it") from err
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    image_path = _find_image(xml_path, root, image_dir)
    size_hw = _image_hw(xml_path, root, image_path, report)
    objects = [
        _parse_object(f"{xml_path.name}, object {k}", obj, size_hw, report)
        for k, obj in enumerate(root.findall("object"))
    ]
    return {
        "stem": xml_path.stem,
        "image_path": image_path,
        "height": size_hw[0],
        "width": size_hw[1],
        "objects": [o for o in objects if o is not None],
    }


def _read_image_sets(main_dir: Path, known: set[str], report: LoadReport) -> dict[str, list[str]]:
    """``{split: sorted image ids}`` from ``ImageSets/Main/*.txt`` files that list one id a line.

    Per-class files (``aeroplane_train.txt``: ``<id> <-1|0|1>`` lines) are skipped.
    """
    splits: dict[str, list[str]] = {}
    for txt in sorted(main_dir.glob("*.txt")) if main_dir.is_dir() else []:
        rows = [
            line.split() for line in txt.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
        rows = [r for r in rows if r]
        if any(len(r) != 1 for r in rows) or txt.stem == "annotations":
            continue
        ids = {r[0] for r in rows}
        for missing in sorted(ids - known):
            report.add(
                "split_ids_without_annotation",
                f"{txt.name}: image id {missing} has no Annotations/{missing}.xml; left out",
            )
        splits[txt.stem] = sorted(ids & known)
    return splits


def _coco_records(records: list[dict]) -> tuple[list, list, list]:
    """images, annotations and categories (ids 1..C in sorted name order), ids in stem order."""
    names = sorted({o["name"] for r in records for o in r["objects"]})
    category_id = {name: i + 1 for i, name in enumerate(names)}
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": f"images/{record['image_path'].name}",
                "width": record["width"],
                "height": record["height"],
                "voc_id": record["stem"],
            }
        )
        for obj in record["objects"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[obj["name"]],
                    "bbox": obj["bbox"],
                    "area": obj["bbox"][2] * obj["bbox"][3],
                    "iscrowd": 0,
                    "difficult": obj["difficult"],
                    "truncated": obj["truncated"],
                }
            )
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]
    return images, annotations, categories


def _write_json(path: Path, data: dict) -> None:
    """Write atomically (a reader sees the old file or the new one), with the user's umask."""
    write_atomic(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


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
    dst.unlink(missing_ok=True)
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copy2(src, dst)


def _write_splits(
    out_dir: Path,
    splits: dict[str, list[str]],
    info: dict,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict],
) -> tuple[dict[str, Path], dict[str, dict]]:
    """Write ``annotations.json`` and one json per split; return the paths and their sizes."""
    files, sizes = {}, {}
    for split, stems in [("annotations", None), *splits.items()]:
        wanted = None if stems is None else set(stems)
        keep = {im["id"] for im in images if wanted is None or im["voc_id"] in wanted}
        subset = {
            "info": {**info, "split": "all" if stems is None else split},
            "licenses": [],
            "images": [im for im in images if im["id"] in keep],
            "annotations": [a for a in annotations if a["image_id"] in keep],
            "categories": categories,
        }
        files[split] = out_dir / f"{split}.json"
        _write_json(files[split], subset)
        sizes[split] = {"images": len(keep), "annotations": len(subset["annotations"])}
    return files, sizes


def convert_voc(
    voc_root: str | Path,
    out_dir: str | Path,
    *,
    link_images: bool = False,
    progress: bool = False,
    overwrite: bool = False,
) -> VocConversion:
    """Convert a VOC folder to ``out_dir/annotations.json`` (all images) + ``out_dir/{split}.json``.

    Images go to ``out_dir/images/`` (copied, or symlinked with ``link_images``) and ``file_name``
    is ``images/<name>``, so ``CocoDetection(out_dir / "train.json")`` finds them. Image ids are
    1..N in sorted XML order, annotation ids 1..M, category ids 1..C in sorted name order; the
    same ids are used in every split file. Output is deterministic for a given input.

    Existing json files of those names, or other files where images go, are refused (an
    :class:`~workbench.safe_paths.OutputError`, before anything is written) unless
    ``overwrite``; images already copied or linked from the same source are left alone.

    Returns:
        ``{json stem: path}``, with ``.summary`` (counts) and ``.report`` (repairs).
    """
    voc_root, out_dir = Path(voc_root), Path(out_dir)
    xml_files = sorted((voc_root / "Annotations").glob("*.xml"))
    if not xml_files:
        raise DatasetError(
            f"{voc_root / 'Annotations'} holds no .xml files; voc_root must be the folder with "
            "Annotations/ and JPEGImages/ (e.g. VOCdevkit/VOC2012)"
        )
    report = LoadReport()
    image_dir = voc_root / "JPEGImages"
    records = [
        _parse_xml(f, image_dir, report)
        for f in tqdm(xml_files, desc="VOC annotations", disable=not progress)
    ]
    images, annotations, categories = _coco_records(records)
    splits = _read_image_sets(voc_root / "ImageSets" / "Main", {r["stem"] for r in records}, report)
    if not overwrite:
        places = [(r["image_path"], out_dir / "images" / r["image_path"].name) for r in records]
        refuse_existing(
            [out_dir / f"{name}.json" for name in ("annotations", *splits)]
            + [dst for src, dst in places if not _already_placed(src, dst, link_images)],
            setting="--out",
        )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for record in tqdm(records, desc="images", disable=not progress):
        src = record["image_path"]
        _place_image(src, out_dir / "images" / src.name, link_images)
    info = {
        "description": f"Pascal VOC dataset {voc_root.name} converted to COCO",
        "source": str(voc_root.resolve()),
        "converter": "workbench.data.voc.convert_voc",
        "box_convention": _BOX_CONVENTION,
        "repairs": dict(sorted(report.counts.items())),
    }
    files, split_sizes = _write_splits(out_dir, splits, info, images, annotations, categories)
    per_category = Counter(a["category_id"] for a in annotations)
    summary = {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "categories": {c["name"]: per_category[c["id"]] for c in categories},
        "splits": split_sizes,
        "repairs": info["repairs"],
    }
    if report.counts:
        first = "\n  ".join(report.messages[:3])
        warnings.warn(
            f"{voc_root}: repaired while converting {summary['repairs']}; first:\n  {first}\n"
            "All are in the result's .report.",
            DatasetWarning,
            stacklevel=2,
        )
    return VocConversion(files, summary, report)
