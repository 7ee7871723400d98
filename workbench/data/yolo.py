"""YOLO txt labels (ultralytics, Roboflow, LabelImg's YOLO mode) to COCO json, read by
CocoDetection. Where names, images and labels are found: :mod:`workbench.data.yolo_layout`.

A label line is ``class cx cy w h``, the box centre and size as fractions of the image's width
``W`` and height ``H`` (the displayed image, EXIF orientation applied). The COCO box is
``[(cx - w/2) W, (cy - h/2) H, w W, h H]`` in pixels, rounded to 1e-6 px. A segmentation line,
``class x1 y1 x2 y2 ...`` (at least 3 points), becomes the bounding box of its points (counted
in the summary as ``boxes_from_polygons``; the outline itself is not kept: the workbench detects
boxes). YOLO class ``k`` is COCO category ``k + 1`` with the name ``names[k]``; every named class
is a category, with or without boxes.

An image without a label file has no objects (the YOLO convention): it is kept with no boxes and
counted in the summary as ``images_without_label_file``; an empty label file means the same.

Repairs, counted in the returned ``report`` and summed up in one :class:`DatasetWarning`, each
message naming the label file and line: ``dropped_invalid`` (not 5 fields nor a polygon, a
non-number, NaN or inf), ``dropped_unknown_category`` (a class id that is no whole number in
names), ``dropped_degenerate`` (zero or negative width or height), ``dropped_outside`` (entirely
outside the image, e.g. pixel coordinates), ``clipped_boxes`` (partly outside: clipped; overshoot
under 0.01 px is rounding and clipped silently), ``dropped_duplicate`` (the same class and
numbers again in one file). Refused with a DatasetError: no class names, a label file without an
image, an unreadable image, an image list naming a missing file, and a dataset where no image has
a label file (labels in the wrong place would otherwise give a dataset without a box).
"""

from __future__ import annotations

import math
from pathlib import Path

from tqdm import tqdm

from workbench.data.coco_writer import Conversion, write_conversion
from workbench.data.dataset import DatasetError, LoadReport
from workbench.data.images import image_size
from workbench.data.yolo_layout import LabelFinder, YoloLayout, find_yolo_layout

_CLIP_TOLERANCE_PX = 0.01
_BOX_CONVENTION = (
    "YOLO class cx cy w h as fractions of the image's width W and height H to COCO xywh pixels: "
    "[(cx - w/2) W, (cy - h/2) H, w W, h H]; a polygon line gives its points' bounding box; "
    "COCO category id = YOLO class + 1"
)


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the dataset's folder when inside it (label names repeat per split)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_line(
    where: str, fields: list[str], names: dict[int, str], report: LoadReport
) -> tuple[int, list[float]] | None:
    """``(class id, numbers)`` of one line, or None (and a report entry) if it is unusable."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        report.add(
            "dropped_invalid",
            f"{where}: {len(fields)} fields; a YOLO line is `class cx cy w h` (5) or a polygon "
            "`class x1 y1 x2 y2 x3 y3 ...` (an odd number, at least 7); fix or delete it",
        )
        return None
    try:
        class_value, numbers = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        report.add("dropped_invalid", f"{where}: not all numbers ({' '.join(fields)}); dropped")
        return None
    if not all(map(math.isfinite, numbers)):
        report.add("dropped_invalid", f"{where}: NaN or infinite coordinate; dropped")
        return None
    if not class_value.is_integer() or int(class_value) not in names:
        report.add(
            "dropped_unknown_category",
            f"{where}: class {fields[0]} is not one of the {len(names)} named classes (ids "
            f"{min(names)}..{max(names)}); add its name or fix the line",
        )
        return None
    return int(class_value), numbers


def _corners(where: str, numbers: list[float], report: LoadReport) -> tuple | None:
    """Normalised ``(x0, y0, x1, y1)`` of a box or polygon line; None if it has no area."""
    if len(numbers) == 4:
        cx, cy, w, h = numbers
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        size = f"w {w}, h {h}"
    else:
        xs, ys = numbers[0::2], numbers[1::2]
        corners = (min(xs), min(ys), max(xs), max(ys))
        size = f"the polygon spans w {corners[2] - corners[0]}, h {corners[3] - corners[1]}"
    if corners[2] <= corners[0] or corners[3] <= corners[1]:
        report.add("dropped_degenerate", f"{where}: zero or negative size ({size}); dropped")
        return None
    return corners


def _pixel_box(
    where: str, corners: tuple, numbers: list[float], size_hw: tuple[int, int], report: LoadReport
) -> list[float] | None:
    """COCO ``[x, y, w, h]`` pixels of normalised corners, clipped to the image; None if outside."""
    height, width = size_hw
    x0, y0, x1, y1 = (
        corners[0] * width,
        corners[1] * height,
        corners[2] * width,
        corners[3] * height,
    )
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        pixels = "; numbers above 1: pixels? YOLO's are fractions of the image's size"
        pixels = pixels if max(numbers) > 1 else ""
        report.add(
            "dropped_outside", f"{where}: box outside the {width}x{height} image{pixels}; dropped"
        )
        return None
    overshoot = max(cx0 - x0, cy0 - y0, x1 - cx1, y1 - cy1)
    if overshoot >= _CLIP_TOLERANCE_PX:
        report.add("clipped_boxes", f"{where}: box beyond the {width}x{height} image; clipped")
    # Rounded to 1e-6 px: fractions times sizes leave float noise (12.799999999999999).
    return [round(v, 6) for v in (cx0, cy0, cx1 - cx0, cy1 - cy0)]


def parse_label_file(
    path: Path, shown: str, names: dict[int, str], size_hw: tuple[int, int], report: LoadReport
) -> tuple[list[dict], int]:
    """The annotations (``category_id`` = class + 1, ``bbox`` xywh pixels) of one label file,
    and how many came from polygon lines."""
    annotations, polygons, seen = [], 0, set()
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for n, line in enumerate(text.splitlines(), start=1):
        fields, where = line.split(), f"{shown}, line {n}"
        read = _read_line(where, fields, names, report) if fields else None
        if read is None:
            continue
        class_id, numbers = read
        if (class_id, *numbers) in seen:
            report.add("dropped_duplicate", f"{where}: repeats an earlier line; dropped")
            continue
        seen.add((class_id, *numbers))
        corners = _corners(where, numbers, report)
        bbox = None if corners is None else _pixel_box(where, corners, numbers, size_hw, report)
        if bbox is not None:
            annotations.append({"category_id": class_id + 1, "bbox": bbox})
            polygons += len(numbers) > 4
    return annotations, polygons


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_labels(path: Path) -> bool:
    """A non-empty .txt whose lines are all numbers, at least 5 a line (not a README)."""
    rows = [line.split() for line in path.read_text(errors="replace").splitlines()]
    rows = [r for r in rows if r]
    return bool(rows) and all(len(r) >= 5 and all(map(_is_number, r)) for r in rows)


def _refuse_labels_without_image(layout: YoloLayout, used: set[Path], finder: LabelFinder) -> None:
    """Every .txt of a ``labels/`` folder, and every label-like .txt beside the images, has an
    image (as an XML without its image is refused by convert_voc)."""
    orphans = [
        p
        for folder in layout.label_folders
        for p in sorted(folder.rglob("*.txt"))
        if p.name.lower() != "classes.txt" and p not in used and p.is_file()
    ]
    for folder in sorted({image.parent for image in layout.images}):
        listing = finder.listing(folder)
        orphans += [
            p
            for p in sorted(folder.glob("*.txt"))
            if p not in used and listing.find_image(p.stem) is None and _looks_like_labels(p)
        ]
    if orphans:
        shown = ", ".join(_shown(p, layout.root) for p in orphans[:3])
        more = f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
        raise DatasetError(
            f"{layout.root}: {len(orphans)} label files have no image: {shown}{more}; put each "
            "image where its label says (images/ for labels/, or beside the .txt) or delete the "
            "label file"
        )


def _records(
    layout: YoloLayout, progress: bool, report: LoadReport
) -> tuple[list[dict], dict[str, int]]:
    """One writer record per image, and the counts the summary adds."""
    finder, records, counts = LabelFinder(), [], {"boxes_from_polygons": 0}
    used: dict[Path, Path] = {}  # label file -> its image
    for image in tqdm(layout.images, desc="YOLO labels", disable=not progress):
        label = finder.label_for(image)
        size_hw = image_size(image)
        annotations = []
        if label is not None:
            other = used.setdefault(label, image)
            if other != image:  # a.jpg and a.png beside one a.txt: which it describes is unknowable
                raise DatasetError(
                    f"{other} and {image} share the label file {label}; move one of the images "
                    "(with a label file of its own) to another folder, or delete it"
                )
            shown = _shown(label, layout.root)
            annotations, polygons = parse_label_file(label, shown, layout.names, size_hw, report)
            counts["boxes_from_polygons"] += polygons
        records.append(
            {
                "key": str(image),
                "image_path": image,
                "height": size_hw[0],
                "width": size_hw[1],
                "image_keys": {"label_file": None if label is None else _shown(label, layout.root)},
                "annotations": annotations,
            }
        )
    if not used:
        first = layout.images[0]
        twin = finder.mirrored(first, existing=False)
        places = f"{twin.with_suffix('.txt')} or " if twin is not None else ""
        raise DatasetError(
            f"{layout.root}: none of the {len(layout.images)} images has a label file (for "
            f"{first.name}: {places}{first.with_suffix('.txt')}); put the .txt labels in labels/ "
            "mirroring images/, or beside the images"
        )
    _refuse_labels_without_image(layout, set(used), finder)
    counts["images_without_label_file"] = len(layout.images) - len(used)
    return records, counts


def convert_yolo(
    yolo_root: str | Path,
    out_dir: str | Path,
    *,
    link_images: bool = False,
    progress: bool = False,
    overwrite: bool = False,
) -> Conversion:
    """Convert a YOLO dataset (a folder, or its data.yaml) to ``out_dir/annotations.json`` (all
    images) and ``out_dir/{split}.json`` per split, as :func:`~workbench.data.voc.convert_voc`.

    Images go to ``out_dir/images/`` under their own names and sub-folders (copied, or
    symlinked with ``link_images``); image ids are 1..N in sorted path order, annotation ids
    1..M; the same ids are used in every split file. Output is deterministic for a given input.
    Existing json files, or other files where images go, are refused unless ``overwrite``.

    Returns:
        ``{json stem: path}``, with ``.summary`` (counts, plus ``images_without_label_file`` and
        ``boxes_from_polygons``) and ``.report`` (repairs).
    """
    yolo_root, out_dir = Path(yolo_root), Path(out_dir)
    layout = find_yolo_layout(yolo_root)
    report = LoadReport()
    records, counts = _records(layout, progress, report)
    splits = {name: {str(p) for p in images} for name, images in layout.splits.items()}
    categories = [
        {"id": class_id + 1, "name": name, "supercategory": "none"}
        for class_id, name in layout.names.items()
    ]
    info = {
        "description": f"YOLO dataset {layout.root.name} converted to COCO",
        "source": str(yolo_root.resolve()),
        "class_names": str(layout.names_file.resolve()),
        "converter": "workbench.data.yolo.convert_yolo",
        "box_convention": _BOX_CONVENTION,
    }
    result = write_conversion(
        out_dir,
        records,
        categories,
        splits,
        info,
        report,
        link_images=link_images,
        overwrite=overwrite,
        progress=progress,
    )
    result.summary.update(counts)
    return result
