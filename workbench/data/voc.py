"""Pascal VOC XML (Pascal VOC, LabelImg, most exporters) to COCO json, read by CocoDetection.

Layouts, detected in this order (folder names in any case, nothing to rename):

- an annotation folder, ``Annotations/`` or ``annotations/`` or ``labels/``, holding the .xml
  files, beside an image folder, ``JPEGImages/`` or ``images/`` (Pascal VOC; LabelImg's
  "change save dir"; most exports);
- .xml files directly in the folder, beside their images (LabelImg's default save).

An XML's image is its ``<filename>`` (name part only) in the image folder, else the XML's stem
with one of ``.jpg .jpeg .png .bmp .tif .tiff .webp`` (any case). ``ImageSets/Main/*.txt``
(one id a line), when present, gives the splits; without it only ``annotations.json`` is written.

Box convention: VOC stores 1-based, inclusive pixel indices; COCO boxes are continuous
coordinates where pixel ``i`` covers ``[i, i + 1)``. As detectron2 does, a VOC box becomes
``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax``, so a single-pixel box (``xmin == xmax``)
is a 1x1 box and is kept. Boxes are clipped to the image; inverted ones (``xmax < xmin``) dropped.

Repairs, counted in the returned ``report`` and summed up in one :class:`DatasetWarning`:
``clipped_boxes``, ``dropped_inverted``, ``dropped_outside``, ``dropped_invalid`` (missing name
or non-numeric coordinates), ``size_from_image`` (``<size>`` missing or not positive: the image
header is used), ``size_corrected`` (``<size>`` disagrees with the image header, which wins
because the boxes must fit the pixels a model will see), and ``split_ids_without_annotation``.
Unrepairable inputs (malformed XML, a missing or unreadable image, two XML files describing one
image) raise a DatasetError.
``difficult`` and ``truncated`` are kept as extra annotation keys (not as ``iscrowd``: VOC
evaluation ignores difficult boxes, but training on them is detectron2's default too).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from tqdm import tqdm

from workbench.data.coco_writer import Conversion, write_conversion
from workbench.data.dataset import DatasetError, LoadReport
from workbench.data.images import image_size
from workbench.data.user_folders import FolderFiles, child_folder, files_below, files_with_suffix

XML_FOLDERS = ("annotations", "labels")  # any case; VOC's Annotations/ is the first
IMAGE_FOLDERS = ("jpegimages", "images")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_BOX_CONVENTION = (
    "VOC 1-based inclusive pixel indices to COCO continuous pixels as detectron2 does: "
    "x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax"
)
_LAYOUTS = (
    "Annotations/, annotations/ or labels/ holding .xml files beside JPEGImages/ or images/ "
    "(any case), or .xml files beside their images"
)

VocConversion = Conversion  # what convert_voc returns: {json stem: path}, .summary, .report


def _no_layout(root: Path) -> DatasetError:
    """What was looked for in ``root``, and where the files may be instead."""
    hint = "pass the folder that holds them" if root.is_dir() else "no such folder: check the path"
    nested = sorted({p.parent for p in files_below(root, ".xml")})
    top = FolderFiles(root)
    labels = child_folder(root, ("labels",))
    txt_labels = labels is not None and bool(
        files_with_suffix(labels, (".txt",)) or files_below(labels, ".txt")
    )
    if nested:
        shown = ", ".join(str(p) for p in nested[:3])
        hint = f".xml files are in {shown}: pass the folder above their annotations/ folder, or "
        hint += "the folder holding both the .xml files and the images"
    elif files_with_suffix(root, (".yaml", ".yml")) or top.find("classes.txt") or txt_labels:
        hint = "these look like YOLO .txt labels: use `python -m workbench data convert-yolo`"
    return DatasetError(
        f"{root} holds no .xml files; voc_root must be the folder with {_LAYOUTS} (e.g. "
        f"VOCdevkit/VOC2012); {hint}"
    )


def find_xml_layout(root: Path) -> tuple[list[Path], Path, str]:
    """``(xml files, image folder, annotation folder's name for messages)`` of ``root``.

    Raises a DatasetError naming ``root``, the layouts looked for and the fix."""
    xml_dir = child_folder(root, XML_FOLDERS)
    xml_files = files_with_suffix(xml_dir, (".xml",)) if xml_dir is not None else []
    if xml_files:
        image_dir = child_folder(root, IMAGE_FOLDERS)
        if image_dir is None:
            raise DatasetError(
                f"{xml_dir} holds {len(xml_files)} .xml files but {root} has no JPEGImages/ or "
                f"images/ folder (any case) beside it; put the images in {root / 'images'}"
            )
        return xml_files, image_dir, f"{xml_dir.name}/"
    xml_files = files_with_suffix(root, (".xml",))
    if not xml_files:
        raise _no_layout(root)
    return xml_files, root, ""


def _find_image(xml_path: Path, root: ET.Element, images: FolderFiles) -> Path:
    """The image an XML describes: its ``<filename>``, else the XML's stem with an image suffix."""
    # Only the name part: a <filename> must never point outside the image folder.
    name = Path((root.findtext("filename") or "").strip()).name
    found = (images.find(name) if name else None) or images.find_image(xml_path.stem)
    if found is None:
        expected = images.folder / (name or xml_path.stem + ".jpg")
        raise DatasetError(
            f"{xml_path}: its image {expected} does not exist; put the image in {images.folder} "
            f"(as {name or xml_path.stem + '.jpg'}, or {xml_path.stem} with any image suffix) or "
            "delete the annotation file"
        )
    return found


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


def _parse_xml(xml_path: Path, images: FolderFiles, report: LoadReport) -> dict:
    """One annotation file as ``{stem, image_path, height, width, objects}``."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        # ParseError's text gives the line and column, e.g. "mismatched tag: line 5, column 2".
        raise DatasetError(f"{xml_path}: malformed XML ({err}); fix the file or delete it") from err
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    image_path = _find_image(xml_path, root, images)
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


def _read_image_sets(
    main_dir: Path | None, known: set[str], xml_folder: str, report: LoadReport
) -> dict[str, set[str]]:
    """``{split: sorted image ids}`` from ``ImageSets/Main/*.txt`` files that list one id a line.

    Per-class files (``aeroplane_train.txt``: ``<id> <-1|0|1>`` lines) are skipped.
    """
    splits: dict[str, set[str]] = {}
    for txt in files_with_suffix(main_dir, (".txt",)) if main_dir is not None else []:
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
                f"{txt.name}: image id {missing} has no {xml_folder}{missing}.xml; left out",
            )
        splits[txt.stem] = ids & known
    return splits


def _refuse_shared_images(records: list[dict], xml_files: list[Path]) -> None:
    """Two XML files naming one image (a copied XML whose ``<filename>`` was never updated):
    which boxes belong to it is unknowable."""
    first: dict[Path, Path] = {}
    for record, xml_path in zip(records, xml_files, strict=True):
        other = first.setdefault(record["image_path"], xml_path)
        if other != xml_path:
            raise DatasetError(
                f"{other} and {xml_path} both describe the image {record['image_path']}; fix "
                "the <filename> of the one written for another image, or delete it"
            )


def _writer_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Records for :func:`write_conversion` and categories (ids 1..C in sorted name order)."""
    names = sorted({o["name"] for r in records for o in r["objects"]})
    category_id = {name: i + 1 for i, name in enumerate(names)}
    out = [
        {
            "key": r["stem"],
            "image_path": r["image_path"],
            "height": r["height"],
            "width": r["width"],
            "image_keys": {"voc_id": r["stem"]},
            "annotations": [
                {
                    "category_id": category_id[o["name"]],
                    "bbox": o["bbox"],
                    "difficult": o["difficult"],
                    "truncated": o["truncated"],
                }
                for o in r["objects"]
            ],
        }
        for r in records
    ]
    categories = [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]
    return out, categories


def convert_voc(
    voc_root: str | Path,
    out_dir: str | Path,
    *,
    link_images: bool = False,
    progress: bool = False,
    overwrite: bool = False,
) -> VocConversion:
    """Convert a VOC-XML folder to ``out_dir/annotations.json`` (all images) and
    ``out_dir/{split}.json`` per ``ImageSets/Main`` split (layouts: the module docstring).

    Images go to ``out_dir/images/`` under their own names (copied, or symlinked with
    ``link_images``) and ``file_name`` is ``images/<name>``, so ``CocoDetection(out_dir /
    "train.json")`` finds them. Image ids are 1..N in sorted XML order, annotation ids 1..M,
    category ids 1..C in sorted name order; the same ids are used in every split file. Output is
    deterministic for a given input.

    Existing json files of those names, or other files where images go, are refused (an
    :class:`~workbench.safe_paths.OutputError`, before anything is written) unless
    ``overwrite``; images already copied or linked from the same source are left alone.

    Returns:
        ``{json stem: path}``, with ``.summary`` (counts) and ``.report`` (repairs).
    """
    voc_root, out_dir = Path(voc_root), Path(out_dir)
    xml_files, image_dir, xml_folder = find_xml_layout(voc_root)
    report = LoadReport()
    images = FolderFiles(image_dir)
    records = [
        _parse_xml(f, images, report)
        for f in tqdm(xml_files, desc="VOC annotations", disable=not progress)
    ]
    _refuse_shared_images(records, xml_files)
    image_sets = child_folder(voc_root, ("imagesets",))
    main_dir = child_folder(image_sets, ("main",)) if image_sets is not None else None
    splits = _read_image_sets(main_dir, {r["stem"] for r in records}, xml_folder, report)
    writer_records, categories = _writer_records(records)
    info = {
        "description": f"Pascal VOC dataset {voc_root.name} converted to COCO",
        "source": str(voc_root.resolve()),
        "converter": "workbench.data.voc.convert_voc",
        "box_convention": _BOX_CONVENTION,
    }
    return write_conversion(
        out_dir,
        writer_records,
        categories,
        splits,
        info,
        report,
        link_images=link_images,
        overwrite=overwrite,
        progress=progress,
    )
