"""``trees``: real aerial tree crowns from the example files of the deepforest package.

deepforest 2.1.0 (MIT, installed with ``pip install --no-deps``; never imported, since its
``__init__`` pulls in lightning) ships four RGB orthophotos of NEON field sites, 10 cm pixels,
with Pascal VOC boxes around tree crowns. :func:`prepare_trees` turns them into COCO json:

- tiles: each image is cut into non-overlapping tiles of about ``TILE_PX`` px. A side of L px is
  cut into ``round(L / TILE_PX)`` (at least one) parts of equal length, so no tile is a sliver,
  nothing is padded and no pixel is lost: the 2299x2472 crop gives 6x6 tiles of 383-384 x 412 px,
  the 1249x1035 crop 3x3 tiles of 416-417 x 345 px, and the two 400x400 images one tile each.
- boxes: VOC's 1-based inclusive pixels become continuous ones as :mod:`workbench.data.voc` reads
  them (``x0 = xmin - 1``), then each box is clipped to each tile it touches. A tile keeps a box
  when at least ``MIN_INSIDE`` of its area lies inside; the cut-off rest of a crown is kept as an
  ``iscrowd`` region, which training skips and COCO evaluation ignores, so a detection on half a
  crown at a tile's border is neither a false positive nor a missed tree. A box straddling four
  tiles may stay in none but as crowd regions.
- tiles without a kept box are dropped: two tiles of the 2299x2472 crop, meadow with shrubs and
  fallen trunks (a tile with no tree gives the interactive protocol nothing to prompt with).
- every label (``Tree``; SOAP_061's ``Dead`` and ``Alive``) becomes the one category ``tree``.
- splits by source image, so neighbouring tiles of one photo never sit on both sides of a split
  (``SCENES`` below); ``annotations.json`` holds every tile. Trees (and crowd regions) per split:
  train 35 tiles, 589 (138); val 9 tiles, 271 (59); test 1 tile, 61 (0); all 45 tiles, 921 (197).
  A test of one 400x400 tile is small, but it is the only site of its own (Florida) besides
  SOAP_061, whose 37 boxes of two labels are more use in training.

The output depends only on the files: ids follow ``SCENES`` and the tiles' row-major order, and
the same files give byte-identical jsons and PNGs.
"""

from __future__ import annotations

import io
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from workbench.data.dataset import DatasetError
from workbench.package_files import package_file
from workbench.safe_paths import refuse_existing, write_atomic

PACKAGE = "deepforest"
INSTALL = "pip install --no-deps deepforest==2.1.0"
# (file stem in deepforest/data/, split): YELL crop2 (the largest, 36 tiles) and SOAP_061 train,
# the other Yellowstone crop (9 tiles) is held out for validation, OSBS_029 (Florida) is the test.
SCENES = (
    ("2019_YELL_2_528000_4978000_image_crop2", "train"),
    ("SOAP_061", "train"),
    ("2019_YELL_2_541000_4977000_image_crop", "val"),
    ("OSBS_029", "test"),
)
SPLITS = ("train", "val", "test")
TILE_PX = 400
MIN_INSIDE = 0.6  # the share of a box's area a tile must hold to keep it as a tree
CATEGORY = {"id": 1, "name": "tree", "supercategory": "plant"}


def package_data(dist: str = PACKAGE) -> Path:
    """The installed ``deepforest/data/`` folder, found without importing the package."""
    try:
        return package_file(dist, f"{PACKAGE}/data/{SCENES[0][0]}.xml").parent
    except FileNotFoundError as err:
        raise DatasetError(
            f"the trees dataset is made from the {PACKAGE} package's files, and {err}: run "
            f"`{INSTALL}` (or set WORKBENCH_TREES to a folder holding its data/ files)"
        ) from err


def cuts(length: int, tile: int = TILE_PX) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: ranges cutting ``length`` into equal parts of about ``tile``."""
    parts = max(1, round(length / tile))
    edges = [i * length // parts for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def read_voc(xml_path: Path) -> tuple[int, int, list[list[float]]]:
    """``(width, height, boxes)`` of a VOC file; boxes xyxy in continuous pixels."""
    try:
        root = ET.parse(xml_path).getroot()
        width = int(root.findtext("size/width"))
        height = int(root.findtext("size/height"))
        boxes = [
            [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            for obj in root.iter("object")
        ]
    except (ET.ParseError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{xml_path}: not a readable VOC file ({err}); reinstall: {INSTALL}"
        ) from err
    return width, height, [[x0 - 1, y0 - 1, x1, y1] for x0, y0, x1, y1 in boxes]


def tile_boxes(
    boxes: list[list[float]], x0: int, y0: int, x1: int, y1: int
) -> list[tuple[list[float], bool]]:
    """``(box xywh in tile pixels, iscrowd)`` of every box overlapping the tile ``x0..x1, y0..y1``:
    a tree where at least ``MIN_INSIDE`` of its area is inside, else a crowd region."""
    out = []
    for bx0, by0, bx1, by1 in boxes:
        cx0, cy0 = max(bx0, x0), max(by0, y0)
        cx1, cy1 = min(bx1, x1), min(by1, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        inside = (cx1 - cx0) * (cy1 - cy0) / ((bx1 - bx0) * (by1 - by0))
        box = [cx0 - x0, cy0 - y0, cx1 - cx0, cy1 - cy0]
        out.append(([round(v, 3) for v in box], inside < MIN_INSIDE))
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_trees(raw: Path, out: Path, overwrite: bool) -> None:
    """Tile deepforest's four annotated images in ``raw`` (its ``deepforest/data/`` folder, or one
    holding the same files) into ``out/images/`` with ``{split}.json`` and ``annotations.json``."""
    missing = [
        f"{stem}{ext}"
        for stem, _ in SCENES
        for ext in (".xml", ".png")
        if not (raw / f"{stem}{ext}").is_file()
    ]
    if missing:
        raise DatasetError(
            f"{raw} lacks {', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''}: the "
            f"trees dataset is made from the {PACKAGE} package's files; run `{INSTALL}`, or point "
            "WORKBENCH_TREES at its deepforest/data/ folder"
        )
    jsons = [out / f"{s}.json" for s in (*SPLITS, "annotations")]
    if not overwrite:
        refuse_existing(jsons, what="trees is already in")
    (out / "images").mkdir(parents=True, exist_ok=True)
    data = {s: {"images": [], "annotations": []} for s in (*SPLITS, "all")}
    for stem, split in SCENES:
        width, height, boxes = read_voc(raw / f"{stem}.xml")
        with Image.open(raw / f"{stem}.png") as im:
            image = im.convert("RGB")
        if image.size != (width, height):
            raise DatasetError(f"{raw / stem}.png is {image.size}, its XML says {(width, height)}")
        for y0, y1 in cuts(height):
            for x0, x1 in cuts(width):
                rows = tile_boxes(boxes, x0, y0, x1, y1)
                if all(crowd for _, crowd in rows):
                    continue  # no tree to prompt with or find
                name = f"images/{stem}_x{x0}_y{y0}.png"
                write_atomic(out / name, _png(image.crop((x0, y0, x1, y1))))
                _add(data, split, name, x1 - x0, y1 - y0, rows)
    files = {"annotations": data.pop("all"), **data}
    for stem, part in files.items():
        coco = {
            "info": {"description": f"trees ({stem}): {PACKAGE} example tiles, see trees.py"},
            "images": part["images"],
            "annotations": part["annotations"],
            "categories": [CATEGORY],
        }
        write_atomic(out / f"{stem}.json", json.dumps(coco, separators=(",", ":")))


def _add(data: dict, split: str, name: str, width: int, height: int, rows: list) -> None:
    """Append one tile and its boxes to ``split`` and to ``all`` (ids shared by both)."""
    image_id = len(data["all"]["images"]) + 1
    image = {"id": image_id, "file_name": name, "width": width, "height": height}
    anns = [
        {
            "id": len(data["all"]["annotations"]) + 1 + k,
            "image_id": image_id,
            "category_id": CATEGORY["id"],
            "bbox": box,
            "area": round(box[2] * box[3], 3),
            "iscrowd": int(crowd),
        }
        for k, (box, crowd) in enumerate(rows)
    ]
    for key in (split, "all"):
        data[key]["images"].append(image)
        data[key]["annotations"].extend(anns)
