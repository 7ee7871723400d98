"""Users' own labelled folders convert as they are: LabelImg / VOC XML layouts, YOLO txt labels
(data.yaml or classes.txt), and `data split` of the result. Bad input names the file and line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image
from testing_constants import cli_in_process as cli

from workbench.data.coco import CocoDetection
from workbench.data.dataset import DatasetError, DatasetWarning
from workbench.data.split import SplitError, split_coco
from workbench.data.voc import convert_voc
from workbench.data.yolo import convert_yolo
from workbench.safe_paths import OutputError


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _image(path: Path, size_wh=(64, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size_wh, (90, 20, 200)).save(path)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- VOC XML: LabelImg layouts --------------------------------------------------------------------


def _xml(filename: str | None, objects=(), size_wh=(64, 32)) -> str:
    name = f"<filename>{filename}</filename>" if filename is not None else ""
    boxes = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    size = f"<size><width>{size_wh[0]}</width><height>{size_wh[1]}</height></size>"
    return f"<annotation>{name}{size}{boxes}</annotation>"


@pytest.mark.parametrize(
    ("xml_folder", "image_folder"),
    [("annotations", "Images"), ("Labels", "images"), ("ANNOTATIONS", "JPEGImages")],
)
def test_labelimg_folders_convert_without_renaming_anything(tmp_path, xml_folder, image_folder):
    root = tmp_path / "mine"
    (root / xml_folder).mkdir(parents=True)
    _image(root / image_folder / "IMG_1.JPG")
    _image(root / image_folder / "IMG_2.JPG")
    _image(root / image_folder / "photo 3.png")
    xmls = {
        "IMG_1.xml": _xml("IMG_1.JPG", [("cat", 1, 1, 10, 20)]),
        "IMG_2.xml": _xml("img_2.jpg", [("dog", 5, 6, 64, 32)]),  # <filename> in another case
        "photo 3.XML": _xml(None, [("cat", 2, 2, 3, 3)]),  # no <filename>: found by stem
    }
    for name, text in xmls.items():
        (root / xml_folder / name).write_text(text, encoding="utf-8")
    before = _files(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair
        result = convert_voc(root, tmp_path / "out")
    assert _files(root) == before
    assert sorted(result) == ["annotations"]  # no ImageSets/Main: no split files, as for VOC
    data = _load(result["annotations"])
    assert [im["file_name"] for im in data["images"]] == [
        "images/IMG_1.JPG",
        "images/IMG_2.JPG",
        "images/photo 3.png",
    ]
    assert [(a["image_id"], a["bbox"]) for a in data["annotations"]] == [
        (1, [0.0, 0.0, 10.0, 20.0]),
        (2, [4.0, 5.0, 60.0, 27.0]),
        (3, [1.0, 1.0, 2.0, 2.0]),
    ]
    assert (tmp_path / "out" / "images" / "photo 3.png").is_file()
    dataset = CocoDetection(result["annotations"])
    assert [len(dataset.target(i)) for i in range(3)] == [1, 1, 1]


def test_xml_beside_the_images_converts(tmp_path):
    root = tmp_path / "photos"
    _image(root / "a.png")
    _image(root / "b.jpeg")
    (root / "a.xml").write_text(_xml("a.png", [("cat", 1, 1, 8, 8)]))
    (root / "b.xml").write_text(_xml("b.jpeg", [("dog", 1, 1, 4, 4), ("cat", 2, 2, 5, 5)]))
    result = convert_voc(root, tmp_path / "out", link_images=True)
    data = _load(result["annotations"])
    assert [(im["file_name"], im["voc_id"]) for im in data["images"]] == [
        ("images/a.png", "a"),
        ("images/b.jpeg", "b"),
    ]
    assert [c["name"] for c in data["categories"]] == ["cat", "dog"]
    assert result.summary["num_annotations"] == 3
    assert (tmp_path / "out" / "images" / "a.png").resolve() == (root / "a.png").resolve()


def test_voc_image_sets_still_split_a_labelimg_layout(tmp_path):
    root = tmp_path / "mine"
    for stem in ("a", "b"):
        _image(root / "images" / f"{stem}.jpg")
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{stem}.xml").write_text(_xml(None, [("x", 1, 1, 5, 5)]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\nzzz\n")
    with pytest.warns(DatasetWarning, match="split_ids_without_annotation"):
        result = convert_voc(root, tmp_path / "out")
    assert [im["voc_id"] for im in _load(result["val"])["images"]] == ["b"]
    assert "val.txt: image id zzz has no annotations/zzz.xml" in result.report.messages[0]


def test_an_unknown_layout_names_the_folder_what_was_looked_for_and_the_fix(tmp_path):
    (tmp_path / "mine" / "pictures").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        convert_voc(tmp_path / "mine", tmp_path / "out")
    message = str(err.value)
    assert str(tmp_path / "mine") in message
    assert (
        "Annotations/, annotations/ or labels/" in message and "JPEGImages/ or images/" in message
    )
    assert ".xml files beside their images" in message and "pass the folder" in message
    # .xml files one level down: the hint names where they are.
    _image(tmp_path / "mine" / "pictures" / "a.jpg")
    (tmp_path / "mine" / "pictures" / "a.xml").write_text(_xml("a.jpg"))
    with pytest.raises(DatasetError, match=r"\.xml files are in .*pictures"):
        convert_voc(tmp_path / "mine", tmp_path / "out")
    # YOLO labels: the hint names the other command.
    (tmp_path / "yolo" / "labels").mkdir(parents=True)
    (tmp_path / "yolo" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="data convert-yolo"):
        convert_voc(tmp_path / "yolo", tmp_path / "out")


def test_xml_folder_without_images_and_folders_differing_in_case_are_refused(tmp_path):
    root = tmp_path / "mine"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "a.xml").write_text(_xml("a.jpg"))
    with pytest.raises(DatasetError, match=r"holds 1 \.xml files but .* no JPEGImages/ or images/"):
        convert_voc(root, tmp_path / "out")
    (root / "Annotations").mkdir()
    with pytest.raises(DatasetError, match=r"holds both Annotations/ and annotations/"):
        convert_voc(root, tmp_path / "out")


def test_two_xml_files_describing_one_image_are_refused(tmp_path):
    root = tmp_path / "photos"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    (root / "a.xml").write_text(_xml("a.jpg", [("x", 1, 1, 5, 5)]))
    (root / "b.xml").write_text(_xml("a.jpg", [("x", 1, 1, 5, 5)]))  # copied, never updated
    with pytest.raises(DatasetError, match=r"a\.xml and .*b\.xml both describe the image .*a\.jpg"):
        convert_voc(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_images_of_a_labelimg_folder_are_refused(tmp_path):
    root = tmp_path / "photos"
    (root / "a.xml").parent.mkdir(parents=True)
    (root / "a.xml").write_text(_xml("a.jpg"))
    with pytest.raises(DatasetError, match=r"a\.xml: its image .*a\.jpg does not exist; put"):
        convert_voc(root, tmp_path / "out")
    (root / "a.jpg").write_text("not an image")
    with pytest.raises(DatasetError, match=r"a\.xml: .*a\.jpg is not an image file"):
        convert_voc(root, tmp_path / "out")


# --- YOLO -----------------------------------------------------------------------------------------


def _ultralytics(root: Path, names_yaml: str) -> Path:
    """images/{train,val} + labels/{train,val} and a data.yaml; 64 x 32 images."""
    _image(root / "images" / "train" / "a.jpg")
    _image(root / "images" / "train" / "B.JPG")
    _image(root / "images" / "val" / "a.jpg")  # the same name in another split
    _image(root / "images" / "val" / "empty.png")  # no label file: no objects
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir(parents=True)
    (labels / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.125 0.25 0.25 0.5\n")
    (labels / "train" / "B.txt").write_text("")  # empty: no objects
    # A polygon (segmentation) line: its bounding box.
    (labels / "val" / "a.txt").write_text("1 0.25 0.25 0.75 0.25 0.5 0.75\n")
    (root / "data.yaml").write_text(f"{names_yaml}\ntrain: images/train\nval: images/val\n")
    return root


@pytest.mark.parametrize(
    "names_yaml", ["names: [cat, dog]", "nc: 2\nnames:\n  0: cat\n  1: dog"], ids=["list", "dict"]
)
def test_ultralytics_layout_round_trips_to_exact_pixel_boxes(tmp_path, names_yaml):
    root = _ultralytics(tmp_path / "yolo", names_yaml)
    before = _files(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair
        result = convert_yolo(root, tmp_path / "out")
    assert _files(root) == before
    assert sorted(result) == ["annotations", "train", "val"]
    data = _load(result["annotations"])
    assert data["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "none"},
        {"id": 2, "name": "dog", "supercategory": "none"},
    ]
    assert [(im["file_name"], im["width"], im["height"]) for im in data["images"]] == [
        ("images/train/B.JPG", 64, 32),
        ("images/train/a.jpg", 64, 32),
        ("images/val/a.jpg", 64, 32),
        ("images/val/empty.png", 64, 32),
    ]
    # 0 0.5 0.5 0.25 0.5 on 64 x 32: x0 = (0.5 - 0.125) * 64 = 24, y0 = (0.5 - 0.25) * 32 = 8
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"]] == [
        (2, 1, [24.0, 8.0, 16.0, 16.0]),
        (2, 2, [0.0, 0.0, 16.0, 16.0]),
        (3, 2, [16.0, 8.0, 32.0, 16.0]),  # polygon x in [0.25, 0.75], y in [0.25, 0.75]
    ]
    assert [im["label_file"] for im in data["images"]] == [
        "labels/train/B.txt",
        "labels/train/a.txt",
        "labels/val/a.txt",
        None,
    ]
    assert result.summary["splits"] == {
        "annotations": {"images": 4, "annotations": 3},
        "train": {"images": 2, "annotations": 2},
        "val": {"images": 2, "annotations": 1},
    }
    assert result.summary["images_without_label_file"] == 1
    assert result.summary["boxes_from_polygons"] == 1
    dataset = CocoDetection(result["val"])
    image, target = dataset[0]
    assert image.shape == (3, 32, 64) and len(target) == 1 and len(dataset.target(1)) == 0


def test_data_yaml_path_lists_and_roboflow_parent_paths_are_resolved(tmp_path):
    root = tmp_path / "export"
    _image(root / "train" / "images" / "t.jpg")
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "t.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    _image(root / "pool" / "v.png")
    (root / "pool" / "v.txt").write_text("1 0.5 0.5 1 1\n")
    (root / "val.txt").write_text("./pool/v.png\n")
    # Roboflow writes ../train/images; the list is relative to path: (here the yaml's folder).
    (root / "data.yaml").write_text(
        "path: .\ntrain: ../train/images\nval: val.txt\nnames: {0: ant, 1: bee}\n"
    )
    result = convert_yolo(root / "data.yaml", tmp_path / "out")
    train, val = _load(result["train"]), _load(result["val"])
    assert [im["file_name"] for im in train["images"]] == ["images/train/images/t.jpg"]
    assert [im["file_name"] for im in val["images"]] == ["images/pool/v.png"]
    assert [a["bbox"] for a in train["annotations"]] == [[16.0, 8.0, 32.0, 16.0]]
    assert [a["bbox"] for a in val["annotations"]] == [[0.0, 0.0, 64.0, 32.0]]
    (root / "data.yaml").write_text("train: nowhere/images\nnames: [ant]\n")
    with pytest.raises(DatasetError, match=r"data\.yaml: train: 'nowhere/images' is no folder"):
        convert_yolo(root, tmp_path / "out2")


@pytest.mark.parametrize("where", ["root", "labels"])
def test_classes_txt_with_flat_images_and_labels_folders(tmp_path, where):
    root = tmp_path / "labelimg"
    _image(root / "Images" / "x.PNG", size_wh=(100, 50))
    (root / "Labels").mkdir()
    (root / "Labels" / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    names = root / "classes.txt" if where == "root" else root / "Labels" / "classes.txt"
    names.write_text("person\ncar\n\n")
    result = convert_yolo(root, tmp_path / "out")
    data = _load(result["annotations"])
    assert [c["name"] for c in data["categories"]] == ["person", "car"]
    assert [im["file_name"] for im in data["images"]] == ["images/x.PNG"]
    assert [(a["category_id"], a["bbox"]) for a in data["annotations"]] == [
        (2, [40.0, 15.0, 20.0, 20.0])
    ]
    assert sorted(result) == ["annotations"]


def test_txt_beside_the_images_converts_and_a_readme_is_not_a_label(tmp_path):
    root = tmp_path / "photos"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    (root / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("thing\n")
    (root / "README.txt").write_text("Photos from the garden, labelled in LabelImg.\n")
    result = convert_yolo(root, tmp_path / "out")
    assert result.summary["num_annotations"] == 1
    assert result.summary["images_without_label_file"] == 1
    (root / "c.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # its image is missing
    with pytest.raises(DatasetError, match=r"1 label files have no image: c\.txt; put each"):
        convert_yolo(root, tmp_path / "out2")
    (root / "c.txt").unlink()
    _image(root / "a.png")  # a.jpg and a.png beside one a.txt
    with pytest.raises(DatasetError, match=r"a\.jpg and .*a\.png share the label file .*a\.txt"):
        convert_yolo(root, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


LINES = [
    ("0 0.5 0.5 0.25", "dropped_invalid", "4 fields; a YOLO line is `class cx cy w h` (5)"),
    ("0 0.5 0.5 0.25 0.5 0.9", "dropped_invalid", "6 fields"),
    ("0 0.5 zero 0.25 0.5", "dropped_invalid", "not all numbers"),
    ("0 nan 0.5 0.25 0.5", "dropped_invalid", "NaN or infinite"),
    ("2 0.5 0.5 0.25 0.5", "dropped_unknown_category", "class 2 is not one of the 2 named"),
    ("-1 0.5 0.5 0.25 0.5", "dropped_unknown_category", "class -1"),
    ("0.5 0.5 0.5 0.25 0.5", "dropped_unknown_category", "class 0.5"),
    ("0 0.5 0.5 0 0.5", "dropped_degenerate", "zero or negative size (w 0.0, h 0.5)"),
    ("0 0.5 0.5 -0.1 0.5", "dropped_degenerate", "zero or negative size"),
    ("0 0.1 0.1 0.5 0.1 0.9 0.1", "dropped_degenerate", "the polygon spans"),
    ("0 1.5 0.5 0.25 0.5", "dropped_outside", "box outside the 64x32 image; numbers above 1"),
    ("0 320 16 20 10", "dropped_outside", "pixels?"),
]


@pytest.mark.parametrize(("line", "key", "message"), LINES, ids=[k for _, k, _ in LINES])
def test_a_bad_label_line_is_dropped_and_named_by_file_and_line(tmp_path, line, key, message):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text(f"1 0.5 0.5 0.5 0.5\n\n{line}\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.warns(DatasetWarning, match=key) as record:
        result = convert_yolo(root, tmp_path / "out")
    assert result.summary["repairs"] == {key: 1}
    assert result.report.messages[0].startswith("labels/a.txt, line 3: ")
    assert message in result.report.messages[0]
    assert "labels/a.txt, line 3" in str(record[0].message)
    assert [a["bbox"] for a in _load(result["annotations"])["annotations"]] == [
        [16.0, 8.0, 32.0, 16.0]
    ]


def test_boxes_partly_outside_are_clipped_and_repeated_lines_dropped(tmp_path):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    lines = [
        "0 0.875 0.5 0.5 0.5",  # x in [0.625, 1.125]: clipped to [40, 64]
        "0 0.875 0.5 0.5 0.5",  # the same again
        "0 0.5 0.5 1.0000001 1",  # overshoot of 3e-6 px: rounding, clipped silently
    ]
    (root / "labels" / "a.txt").write_text("\n".join(lines))
    (root / "classes.txt").write_text("cat\n")
    with pytest.warns(DatasetWarning, match="clipped_boxes"):
        result = convert_yolo(root, tmp_path / "out")
    assert result.summary["repairs"] == {"clipped_boxes": 1, "dropped_duplicate": 1}
    assert "labels/a.txt, line 2: repeats an earlier line" in result.report.messages[1]
    boxes = [a["bbox"] for a in _load(result["annotations"])["annotations"]]
    assert boxes == [[40.0, 8.0, 24.0, 16.0], [0.0, 0.0, 64.0, 32.0]]


def test_yolo_label_without_image_corrupt_image_and_no_labels_are_refused(tmp_path):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "gone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match=r"1 label files have no image: labels/gone\.txt; put"):
        convert_yolo(root, tmp_path / "out")
    (root / "labels" / "gone.txt").unlink()
    (root / "images" / "a.jpg").write_text("<html>not found</html>")
    with pytest.raises(DatasetError, match=r"a\.jpg is not an image file PIL can read"):
        convert_yolo(root, tmp_path / "out")
    _image(root / "images" / "a.jpg")
    (root / "labels").rename(root / "label")  # a typo: no image has a label file
    with pytest.raises(
        DatasetError, match=r"none of the 1 images has a label file .*labels/a\.txt"
    ):
        convert_yolo(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"no data\.yaml, dataset\.yaml or classes\.txt .* write classes\.txt"),
        ({"classes.txt": "cat\n\ndog\n"}, r"classes\.txt, line 2: empty; class ids count"),
        ({"classes.txt": "cat\ncat\n"}, r"classes 0 and 1 are both called 'cat'"),
        ({"data.yaml": "nc: 3\nnames: [a, b]\n"}, r"nc is 3 but names lists 2 classes"),
        ({"data.yaml": "names: {a: cat}\n"}, r"names has the key 'a'; its keys are class ids"),
        ({"data.yaml": "train: images\n"}, r"no names: list; add the class names"),
        ({"data.yaml": "names: [a\n"}, r"data\.yaml: not valid YAML"),
    ],
)
def test_class_names_that_cannot_be_read_are_refused(tmp_path, files, message):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    for name, text in files.items():
        (root / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        convert_yolo(root, tmp_path / "out")


# --- data split -----------------------------------------------------------------------------------


def _coco(folder: Path, n_images: int = 50) -> Path:
    """n images; every fifth has a box of the rare category 2, every image one of category 1."""
    folder.mkdir(parents=True)
    _image(folder / "pics" / "0.png")
    images = [
        {"id": i, "file_name": "pics/0.png", "width": 64, "height": 32}
        for i in range(1, n_images + 1)
    ]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]}
        for i in range(1, n_images + 1)
    ] + [
        {"id": 1000 + i, "image_id": i, "category_id": 2, "bbox": [2, 2, 5, 5]}
        for i in range(1, n_images + 1, 5)
    ]
    categories = [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}]
    path = folder / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_split_partitions_the_images_deterministically_and_stratified(tmp_path):
    source = _coco(tmp_path / "data")
    first = split_coco(source, tmp_path / "a", val=0.2, test=0.2, seed=3)
    again = split_coco(source, tmp_path / "b", val=0.2, test=0.2, seed=3)
    other = split_coco(source, tmp_path / "c", val=0.2, test=0.2, seed=4)
    assert sorted(first) == ["test", "train", "val"]
    for name in first:
        assert first[name].read_bytes() == again[name].read_bytes(), name
    splits = {name: _load(path) for name, path in first.items()}
    ids = {name: {im["id"] for im in d["images"]} for name, d in splits.items()}
    assert [len(ids[n]) for n in ("train", "val", "test")] == [30, 10, 10]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(1, 51))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert ids != {name: {im["id"] for im in _load(path)["images"]} for name, path in other.items()}
    for name, data in splits.items():  # annotations follow their images; the rare class is in each
        assert {a["image_id"] for a in data["annotations"]} == ids[name]
        rare = {a["image_id"] for a in data["annotations"] if a["category_id"] == 2}
        assert len(rare) == {"train": 6, "val": 2, "test": 2}[name], name
    assert first.summary["val"] == {"images": 10, "annotations": 12, "categories_without_boxes": []}
    # Another folder: file_name is rewritten so the same image file is read.
    dataset = CocoDetection(first["test"])
    assert dataset.image_path(0).resolve() == (tmp_path / "data" / "pics" / "0.png").resolve()
    assert dataset.load_image(0).shape == (3, 32, 64)


def test_split_refuses_bad_fractions_existing_outputs_and_its_own_input(tmp_path):
    source = _coco(tmp_path / "data", n_images=4)
    for val, test, message in [
        (1.0, 0.0, r"--val 1\.0 must lie in \[0, 1\)"),
        (0.2, -0.1, r"--test -0\.1 must lie in \[0, 1\)"),
        (0.6, 0.5, r"sum to 1\.1, leaving no images for train"),
        (0.5, 0.4, r"has 4 images: too few"),
    ]:
        with pytest.raises(SplitError, match=message):
            split_coco(source, tmp_path / "out", val=val, test=test)
    assert not (tmp_path / "out").exists()
    split_coco(source, tmp_path / "out", val=0.25, test=0.0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.json", "val.json"]
    (tmp_path / "out" / "val.json").write_text("mine")
    with pytest.raises(OutputError, match=r"train\.json, .*val\.json already exist; pass --force"):
        split_coco(source, tmp_path / "out", val=0.25, test=0.0)
    assert (tmp_path / "out" / "val.json").read_text() == "mine"
    split_coco(source, tmp_path / "out", val=0.25, test=0.0, overwrite=True)
    assert len(_load(tmp_path / "out" / "val.json")["images"]) == 1
    train = tmp_path / "out" / "train.json"
    with pytest.raises(OutputError, match="is the input file"):
        split_coco(train, tmp_path / "out", val=0.25, test=0.0, overwrite=True)


# --- the command line, end to end -----------------------------------------------------------------


def test_convert_yolo_then_split_then_stats_through_the_command_line(tmp_path, capsys):
    root = _ultralytics(tmp_path / "yolo", "names: [cat, dog]")
    out = tmp_path / "coco"
    status, stdout, err = cli(capsys, "data", "convert-yolo", root, "--out", out)
    assert status == 0, err
    assert f"train: {out / 'train.json'} (2 images, 2 boxes)" in stdout
    assert "1 images have no label file: kept with no boxes" in stdout
    # Never overwritten without --force; nothing changed.
    mine = (out / "annotations.json").read_bytes()
    status, _, err = cli(capsys, "data", "convert-yolo", root, "--out", out)
    assert status == 2 and "already exist" in err and "--force" in err
    assert (out / "annotations.json").read_bytes() == mine
    assert cli(capsys, "data", "convert-yolo", root, "--out", out, "--force")[0] == 0
    status, stdout, err = cli(
        capsys, "data", "split", out / "annotations.json", "--out", tmp_path / "s", "--val", 0.25
    )
    assert status == 0, err
    assert "train: " in stdout and "(2 images" in stdout and "val: " in stdout
    status, stdout, err = cli(capsys, "data", "stats", tmp_path / "s" / "train.json")
    assert status == 0 and "images: 2" in stdout, err
    status, _, err = cli(
        capsys, "data", "split", out / "annotations.json", "--out", tmp_path / "t", "--test", 1
    )
    assert status == 2 and err.startswith("error: --test 1.0 must lie in [0, 1)")


def test_convert_voc_of_a_labelimg_folder_through_the_command_line(tmp_path, capsys):
    root = tmp_path / "mine"
    _image(root / "Images" / "IMG_1.JPG")
    (root / "annotations").mkdir()
    (root / "annotations" / "IMG_1.xml").write_text(_xml("IMG_1.JPG", [("cat", 1, 1, 9, 9)]))
    status, stdout, err = cli(capsys, "data", "convert-voc", root, "--out", tmp_path / "out")
    assert status == 0, err
    assert "annotations: " in stdout and "(1 images, 1 boxes)" in stdout
    assert "1 categories: {'cat': 1}" in stdout
    status, _, err = cli(
        capsys, "data", "convert-voc", tmp_path / "nothing", "--out", tmp_path / "o"
    )
    assert status == 2 and "nothing holds no .xml files" in err and "no such folder" in err
