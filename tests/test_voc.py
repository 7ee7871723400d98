"""convert_voc: BCCD converts completely; repairs are counted; bad inputs name the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from workbench.data.coco import CocoDetection, DatasetWarning
from workbench.data.dataset import DatasetError
from workbench.data.voc import convert_voc
from workbench.safe_paths import OutputError

# --- BCCD, the real dataset -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bccd(bccd_voc, tmp_path_factory):
    out = tmp_path_factory.mktemp("bccd_coco")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BCCD converts without a single repair
        result = convert_voc(bccd_voc, out, link_images=True)
    return result


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_bccd_loads_in_pycocotools_with_every_box(bccd):
    coco = COCO(str(bccd["annotations"]))
    assert (len(coco.imgs), len(coco.cats), len(coco.anns)) == (364, 3, 4888)
    assert {c["name"]: c["id"] for c in coco.cats.values()} == {"Platelets": 1, "RBC": 2, "WBC": 3}
    counts = {c["name"]: len(coco.getAnnIds(catIds=[c["id"]])) for c in coco.cats.values()}
    assert counts == {"Platelets": 361, "RBC": 4155, "WBC": 372}
    assert bccd.summary["repairs"] == {}


def test_bccd_splits_partition_the_images_and_boxes(bccd):
    splits = {s: _load(bccd[s]) for s in ("train", "val", "test", "trainval")}
    assert {s: len(d["images"]) for s, d in splits.items()} == {
        "train": 205,
        "val": 87,
        "test": 72,
        "trainval": 292,
    }
    assert sum(len(splits[s]["annotations"]) for s in ("train", "val", "test")) == 4888
    ids = [{im["id"] for im in splits[s]["images"]} for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] == {im["id"] for im in splits["trainval"]["images"]}


def test_bccd_point_boxes_become_one_pixel_boxes(bccd):
    data = _load(bccd["annotations"])
    image_id = {im["voc_id"]: im["id"] for im in data["images"]}
    boxes = {(a["image_id"], tuple(a["bbox"])): a for a in data["annotations"]}
    # <xmin>504</xmin><ymin>337</ymin><xmax>504</xmax><ymax>337</ymax> -> [503, 336, 1, 1]
    assert (image_id["BloodImage_00338"], (503.0, 336.0, 1.0, 1.0)) in boxes
    assert (image_id["BloodImage_00343"], (180.0, 328.0, 1.0, 1.0)) in boxes
    # A WBC touching the bottom edge: ymax = 480 = height stays inside; truncated flag kept.
    wbc = boxes[(image_id["BloodImage_00338"], (243.0, 326.0, 266.0, 154.0))]
    assert (wbc["truncated"], wbc["difficult"], wbc["category_id"]) == (1, 0, 3)


def test_bccd_images_are_linked_and_load_through_coco_detection(bccd, bccd_voc):
    data = _load(bccd["annotations"])
    assert data["info"]["source"] == str(bccd_voc.resolve())
    first = bccd["annotations"].parent / data["images"][0]["file_name"]
    assert first.is_symlink() and first.resolve().parent == (bccd_voc / "JPEGImages").resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDetection(bccd["train"])
    assert (
        len(dataset) == 205
        and len(dataset.instances()) == bccd.summary["splits"]["train"]["annotations"]
    )
    image, target = dataset[0]
    assert image.shape == (3, 480, 640) and target.size == (480, 640)


def test_conversion_is_deterministic(bccd, bccd_voc, tmp_path):
    again = convert_voc(bccd_voc, tmp_path, link_images=True)
    for split, path in bccd.items():
        assert again[split].read_bytes() == path.read_bytes(), split


# --- small hand-made VOC folders ------------------------------------------------------------------


def _xml(filename: str, size_hw=(40, 60), objects=(), size: bool = True) -> str:
    parts = [f"<annotation><filename>{filename}</filename>"]
    if size:
        parts.append(f"<size><width>{size_hw[1]}</width><height>{size_hw[0]}</height></size>")
    for name, xmin, ymin, xmax, ymax, *flags in objects:
        difficult, truncated = (*flags, 0, 0)[:2]
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult>"
            f"<truncated>{truncated}</truncated><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc(root: Path, xmls: dict[str, str], image_hw=(40, 60), splits=None) -> Path:
    """A VOC folder: one ``<stem>.jpg`` of ``image_hw`` per XML, and ImageSets/Main files."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, text in xmls.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text, encoding="utf-8")
        Image.new("RGB", (image_hw[1], image_hw[0]), (90, 20, 200)).save(
            root / "JPEGImages" / f"{stem}.jpg"
        )
    for name, lines in (splits or {}).items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_boxes_are_clipped_inverted_dropped_and_flags_kept(tmp_path):
    objects = [
        ("dog", 1, 1, 10, 10, 1, 0),  # whole, difficult
        ("cat", 50, 30, 70, 45),  # beyond the 60 x 40 image: clipped
        ("cat", 20, 20, 10, 30),  # xmax < xmin: dropped
        ("cat", 80, 50, 90, 60),  # entirely outside: dropped
        ("cat", "a", 1, 2, 3),  # not a number: dropped
    ]
    voc = _voc(tmp_path / "voc", {"img1": _xml("img1.jpg", objects=objects)})
    with pytest.warns(DatasetWarning, match="dropped_inverted") as record:
        result = convert_voc(voc, tmp_path / "out")
    assert "img1.xml, object 2: inverted box" in str(record[0].message)
    assert result.summary["repairs"] == {
        "clipped_boxes": 1,
        "dropped_inverted": 1,
        "dropped_invalid": 1,
        "dropped_outside": 1,
    }
    data = _load(result["annotations"])
    assert [(a["bbox"], a["difficult"], a["category_id"]) for a in data["annotations"]] == [
        ([0.0, 0.0, 10.0, 10.0], 1, 2),
        ([49.0, 29.0, 11.0, 11.0], 0, 1),
    ]
    assert data["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "none"},
        {"id": 2, "name": "dog", "supercategory": "none"},
    ]
    assert data["info"]["repairs"] == result.summary["repairs"]


def test_missing_or_wrong_size_is_read_from_the_image(tmp_path):
    xmls = {
        "a": _xml("a.jpg", objects=[("x", 1, 1, 5, 5)], size=False),
        "b": _xml("b.jpg", size_hw=(400, 600), objects=[("x", 1, 1, 50, 50)]),
    }
    with pytest.warns(DatasetWarning, match="size_corrected"):
        result = convert_voc(_voc(tmp_path / "voc", xmls), tmp_path / "out")
    assert result.summary["repairs"] == {
        "size_from_image": 1,
        "size_corrected": 1,
        "clipped_boxes": 1,
    }
    images = _load(result["annotations"])["images"]
    assert [(im["height"], im["width"]) for im in images] == [(40, 60), (40, 60)]


def test_split_files_are_read_and_per_class_files_ignored(tmp_path):
    xmls = {s: _xml(f"{s}.jpg", objects=[("x", 1, 1, 5, 5)]) for s in ("a", "b", "c")}
    splits = {"train": ["a", "b"], "val": ["c", "zzz"], "x_train": ["a  1", "b -1"]}
    voc = _voc(tmp_path / "voc", xmls, splits=splits)
    with pytest.warns(DatasetWarning, match="split_ids_without_annotation"):
        result = convert_voc(voc, tmp_path / "out")
    assert sorted(result) == ["annotations", "train", "val"]
    assert [im["voc_id"] for im in _load(result["train"])["images"]] == ["a", "b"]
    assert [im["voc_id"] for im in _load(result["val"])["images"]] == ["c"]
    assert "val.txt: image id zzz has no Annotations/zzz.xml" in result.report.messages[0]


def test_images_are_copied_and_a_rerun_overwrites_only_when_asked(tmp_path):
    voc = _voc(tmp_path / "voc", {"é": _xml("é.jpg", objects=[("x", 1, 1, 5, 5)])})
    first = convert_voc(voc, tmp_path / "out")["annotations"].read_bytes()
    (tmp_path / "out" / "annotations.json").write_text("edited by hand")
    with pytest.raises(OutputError, match=r"annotations\.json already exists; pass --force"):
        convert_voc(voc, tmp_path / "out")
    assert (tmp_path / "out" / "annotations.json").read_text() == "edited by hand"
    result = convert_voc(voc, tmp_path / "out", overwrite=True)
    assert result["annotations"].read_bytes() == first
    copied = tmp_path / "out" / "images" / "é.jpg"
    assert not copied.is_symlink()
    assert copied.read_bytes() == (voc / "JPEGImages" / "é.jpg").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["annotations.json", "images"]
    image, target = CocoDetection(result["annotations"])[0]
    assert image.shape == (3, 40, 60) and len(target) == 1


def test_image_found_by_stem_when_filename_lacks_the_extension(tmp_path):
    voc = _voc(tmp_path / "voc", {"a": _xml("a", objects=[("x", 1, 1, 5, 5)])})
    result = convert_voc(voc, tmp_path / "out", link_images=True)
    assert _load(result["annotations"])["images"][0]["file_name"] == "images/a.jpg"


def test_malformed_xml_names_the_file_and_the_position(tmp_path):
    voc = _voc(tmp_path / "voc", {"ok": _xml("ok.jpg"), "bad": "<annotation><size></annotation>"})
    with pytest.raises(DatasetError, match=r"bad\.xml: malformed XML \(mismatched tag: line 1"):
        convert_voc(voc, tmp_path / "out")


def test_missing_image_names_the_xml_and_the_expected_file(tmp_path):
    voc = _voc(tmp_path / "voc", {"a": _xml("a.jpg")})
    (voc / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a\.xml: its image .*a\.jpg does not exist; put"):
        convert_voc(voc, tmp_path / "out")


def test_unreadable_image_and_empty_folder_are_refused(tmp_path):
    voc = _voc(tmp_path / "voc", {"a": _xml("a.jpg")})
    (voc / "JPEGImages" / "a.jpg").write_text("oops")
    with pytest.raises(DatasetError, match=r"a\.xml: .*a\.jpg is not an image file"):
        convert_voc(voc, tmp_path / "out")
    with pytest.raises(DatasetError, match=r"holds no \.xml files; voc_root must be the folder"):
        convert_voc(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("size_hw", [(40, 60), (60, 40)], ids=["stored", "displayed"])
def test_exif_turned_images_keep_the_frame_their_xml_was_drawn_in(tmp_path, size_hw):
    voc = _voc(tmp_path / "voc", {"p": _xml("p.jpg", size_hw=size_hw, objects=[("x", 1, 1, 5, 5)])})
    img = Image.open(voc / "JPEGImages" / "p.jpg")
    exif = img.getexif()
    exif[0x0112] = 6  # stored 40 x 60, displayed 60 x 40
    img.save(voc / "JPEGImages" / "p.jpg", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no size repair, no size mismatch
        result = convert_voc(voc, tmp_path / "out")
        image, target = CocoDetection(result["annotations"])[0]
    record = _load(result["annotations"])["images"][0]
    assert (record["height"], record["width"]) == size_hw
    assert tuple(image.shape[1:]) == target.size == size_hw
