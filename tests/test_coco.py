"""load_coco_json and CocoDetection: bad files refused with the fix, bad annotations repaired."""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from workbench.data.coco import CocoDetection, DatasetWarning, load_coco_json
from workbench.data.dataset import DatasetError, DetectionDataset


def _image(tmp_path: Path, name: str, hw=(40, 60)) -> dict:
    """Write a solid grey PNG and return its COCO image record."""
    Image.new("RGB", (hw[1], hw[0]), (128, 128, 128)).save(tmp_path / name)
    return {"file_name": name, "height": hw[0], "width": hw[1]}


def _coco(annotations=(), images=None, categories=None) -> dict:
    images = images or [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}]
    categories = categories or [{"id": 1, "name": "cell"}]
    return {"images": images, "annotations": list(annotations), "categories": categories}


def _ann(bbox, id=1, image_id=1, category_id=1, **extra) -> dict:
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _quiet(source, **kwargs) -> CocoDetection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return CocoDetection(source, **kwargs)


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_boxes_labels_and_ids_match_the_json(tmp_path):
    rng = np.random.default_rng(0)
    # Non-contiguous category ids, listed out of order: labels follow ascending id.
    categories = [{"id": 10, "name": "wbc"}, {"id": 3, "name": "rbc"}, {"id": 7, "name": "plt"}]
    images, annotations = [], []
    for image_id, hw in [(5, (40, 60)), (9, (30, 50)), (2, (64, 64))]:
        images.append({"id": image_id, **_image(tmp_path, f"img{image_id}.png", hw)})
        for _ in range(4):
            x, y = rng.uniform(0, hw[1] - 10), rng.uniform(0, hw[0] - 10)
            w, h = rng.uniform(1, hw[1] - x), rng.uniform(1, hw[0] - y)
            annotations.append(
                _ann([x, y, w, h], len(annotations) + 1, image_id, int(rng.choice([3, 7, 10])))
            )
    (tmp_path / "ann.json").write_text(json.dumps(_coco(annotations, images, categories)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean json must load without a single warning
        dataset = CocoDetection(tmp_path / "ann.json")
    assert isinstance(dataset, DetectionDataset)
    assert [c.id for c in dataset.categories] == dataset.category_id_of_label == [3, 7, 10]
    assert [c.label for c in dataset.categories] == [0, 1, 2]
    coco = COCO(str(tmp_path / "ann.json"))
    for index, image_id in enumerate([5, 9, 2]):
        image, target = dataset[index]
        info = coco.imgs[image_id]
        assert image.shape == (3, info["height"], info["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        assert torch.allclose(target.boxes_xyxy().double(), expected.double(), atol=1e-4)
        labels = [dataset.category_id_of_label[int(k)] for k in target.labels]
        assert labels == [a["category_id"] for a in anns]
        assert target.annotation_ids.tolist() == [a["id"] for a in anns]
    assert len(dataset.instances()) == 12 and dataset.report.counts["clipped_boxes"] == 0


def test_transforms_are_applied_by_getitem_only(tmp_path):
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    calls = []

    def flip(image, target):
        calls.append(target.image_id)
        return image.flip(-1), target

    dataset = CocoDetection(_coco([_ann([0, 0, 5, 5])], images), tmp_path, transforms=flip)
    dataset[0]
    dataset.target(0)
    dataset.load_image(0)
    assert calls == [1]


def test_target_needs_no_image_file():
    dataset = CocoDetection(_coco([_ann([6, 4, 30, 20])]))  # no image on disk, no image_root
    target = dataset.target(0)
    assert target.size == target.orig_size == (40, 60)
    assert torch.allclose(target.boxes_cxcywh, torch.tensor([[21 / 60, 14 / 40, 0.5, 0.5]]))
    with pytest.raises(DatasetError, match=r"no image_root was given.*pass image_root="):
        dataset.load_image(0)


def test_unicode_file_names(tmp_path):
    images = [{"id": 1, **_image(tmp_path, "血球 é.png")}]
    (tmp_path / "标注.json").write_text(json.dumps(_coco([_ann([1, 1, 5, 5])], images)), "utf-8")
    image, target = CocoDetection(tmp_path / "标注.json")[0]
    assert image.shape == (3, 40, 60) and len(target) == 1


# --- what is tolerated --------------------------------------------------------------------------


def test_crowd_lvis_keys_missing_ids_and_images_without_annotations_are_tolerated():
    images = [
        {"id": 1, "file_name": "a.png", "height": 40, "width": 60, "neg_category_ids": [2]},
        {
            "id": 2,
            "coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg",
            "height": 40,
            "width": 60,
            "not_exhaustive_category_ids": [1],
        },
    ]
    categories = [{"id": 1, "name": "a", "split": "base"}, {"id": 2, "name": "b", "split": "novel"}]
    annotations = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1, "extra": "x"},
        {"id": 7, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10]},
        {"image_id": 1, "category_id": 2, "bbox": [5, 5, 4, 5]},
    ]
    dataset = CocoDetection(_coco(annotations, images, categories))
    target = dataset.target(0)
    assert target.iscrowd.tolist() == [True, False, False]
    assert target.annotation_ids.tolist() == [8, 7, 9]  # assigned after the largest id
    assert [a["area"] for a in dataset.annotations(0)] == [100.0, 100.0, 20.0]
    assert dataset.image_info(0)["neg_category_ids"] == [2]
    assert dataset.image_info(1)["file_name"] == "val2017/000000000002.jpg"
    assert dataset.report.counts["images_without_annotations"] == 1
    assert dataset.report.counts["crowd_boxes"] == 1
    assert [c.split for c in dataset.categories] == ["base", "novel"]
    assert [i.iscrowd for i in dataset.instances()] == [True, False, False]


def test_the_input_dict_is_not_modified():
    data = _coco([{"image_id": 1, "category_id": 1, "bbox": [50, 0, 30, 10]}])
    before = json.dumps(data)
    _quiet(data)
    load_coco_json(data)
    assert json.dumps(data) == before


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"bad\.json is empty; re-export"),
        ("  \n", r"bad\.json is empty"),
        ('{"images": [],\n "annotations": [,]}', r"bad\.json is not valid JSON: .* line 2, column"),
        ("[1, 2]", r"bad\.json: the top level is a list"),
        ('{"images": []}', r"missing key\(s\) \['annotations', 'categories'\].*empty list"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' is a dict, expected"),
    ],
)
def test_bad_files_are_refused_naming_the_file_and_the_fix(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_coco_json(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match=message):
        CocoDetection(tmp_path / "bad.json")


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.json does not exist"):
        CocoDetection(tmp_path / "nope.json")
    (tmp_path / "latin.json").write_bytes('{"é": 1}'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.json is not UTF-8.*save the json as UTF-8"):
        load_coco_json(tmp_path / "latin.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _coco(images=[{"id": 1, "file_name": "a", "height": 4, "width": 4}] * 2),
            r"duplicate image ids \[1\]; make image ids unique",
        ),
        (
            _coco(categories=[{"id": 3, "name": "a"}, {"id": 3, "name": "b"}]),
            r"duplicate category ids \[3\]",
        ),
        (
            _coco([_ann([0, 0, 1, 1], id=4), _ann([0, 0, 2, 2], id=4)]),
            r"duplicate annotation ids \[4\]; renumber",
        ),
        (
            _coco(images=[{"id": "1", "file_name": "a", "height": 4, "width": 4}]),
            "images\\[0\\] has id '1'; image ids must be integers",
        ),
        (
            _coco(images=[{"id": 1, "file_name": "a", "height": -4, "width": 4}]),
            "has height -4; width and height must be positive integers",
        ),
        (_coco(images=[{"id": 1, "height": 4, "width": 4}]), "has file_name None; set it"),
        (_coco(categories=[{"id": 1}]), r"categories\[0\] has id 1 and name None"),
        (_coco(categories=[{"id": 1, "name": "a", "split": "train"}]), "use 'base' or 'novel'"),
        (_coco(["not a dict"]), r"annotations\[0\] is a str, expected an object"),
    ],
)
def test_bad_structure_is_refused(data, message):
    with pytest.raises(DatasetError, match=message):
        CocoDetection(data)


# --- per-annotation repairs ---------------------------------------------------------------------

_BAD_BOXES = [
    ([math.nan, 0, 5, 5], "dropped_invalid"),
    ([0, 0, math.inf, 5], "dropped_invalid"),
    (["0", 0, 5, 5], "dropped_invalid"),
    ([0, 0, 5], "dropped_invalid"),
    (None, "dropped_invalid"),
    ([True, 0, 5, 5], "dropped_invalid"),
    ([0, 0, 10**400, 5], "dropped_invalid"),
    ([10, 10, -5, 5], "dropped_degenerate"),
    ([10, 10, 0, 5], "dropped_degenerate"),
    ([10, 10, 0.5, 5], "dropped_degenerate"),
    ([59.5, 10, 5, 5], "dropped_degenerate"),  # 0.5 px wide once clipped
    ([70, 10, 5, 5], "dropped_outside"),
    ([-10, 10, 5, 5], "dropped_outside"),
    ([10, 40, 5, 5], "dropped_outside"),
]


@pytest.mark.parametrize(("bbox", "key"), _BAD_BOXES)
def test_bad_boxes_are_dropped_counted_and_named_in_a_warning(tmp_path, bbox, key):
    data = _coco([_ann([1, 2, 3, 4], id=1), _ann(bbox, id=42)])
    (tmp_path / "ann.json").write_text(json.dumps(data))  # json writes NaN / Infinity literals
    with pytest.warns(DatasetWarning, match=r"ann\.json: repaired annotations") as record:
        dataset = CocoDetection(tmp_path / "ann.json")
    assert "image 1 (a.png), annotation 42" in str(record[0].message)
    assert dataset.report.counts[key] == 1
    assert dataset.target(0).annotation_ids.tolist() == [1]
    with pytest.raises(DatasetError, match=r"annotation 42.*strict=True"):
        CocoDetection(tmp_path / "ann.json", strict=True)


def test_partly_outside_boxes_are_clipped_to_the_image():
    dataset = _quiet(_coco([_ann([-5, 30, 20, 20], id=1), _ann([50, -2, 20, 12], id=2)]))
    assert dataset.report.counts["clipped_boxes"] == 2
    assert torch.allclose(
        dataset.target(0).boxes_xyxy(), torch.tensor([[0.0, 30, 15, 40], [50, 0, 60, 10]])
    )
    assert dataset.instances()[1].box_xyxy == (50.0, 0.0, 60.0, 10.0)


def test_rounding_overshoot_is_clipped_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDetection(_coco([_ann([10, 10, 50.004, 5])]), strict=True)
    assert dataset.instances()[0].box_xyxy[2] == 60.0


def test_unknown_category_and_missing_image_are_dropped():
    data = _coco([_ann([0, 0, 5, 5], id=1, category_id=99), _ann([0, 0, 5, 5], id=2, image_id=8)])
    with pytest.warns(DatasetWarning, match="category_id 99 is not in 'categories'"):
        dataset = CocoDetection(data)
    assert dataset.report.counts["dropped_unknown_category"] == 1
    assert dataset.report.counts["dropped_missing_image"] == 1
    assert "annotation 2 refers to image_id 8" in dataset.report.messages[1]
    assert len(dataset.instances()) == 0
    with pytest.raises(DatasetError, match="category_id 99"):
        CocoDetection(data, strict=True)


def test_min_box_size_is_a_threshold_in_pixels():
    data = _coco([_ann([0, 0, 3, 10], id=1), _ann([0, 0, 10, 10], id=2)])
    assert len(_quiet(data, min_box_size=4).instances()) == 1
    assert len(_quiet(data, min_box_size=3).instances()) == 2


# --- decoding -----------------------------------------------------------------------------------


def test_size_mismatch_warns_counts_and_scales_boxes(tmp_path):
    _image(tmp_path, "a.png", hw=(80, 120))  # the json says 40 x 60
    dataset = CocoDetection(_coco([_ann([6, 4, 30, 20])]), tmp_path)
    with pytest.warns(DatasetWarning, match=r"a\.png\) decodes to height x width \(80, 120\)"):
        image, target = dataset[0]
    assert image.shape == (3, 80, 120) and target.size == target.orig_size == (80, 120)
    assert torch.allclose(target.boxes_xyxy(), torch.tensor([[12.0, 8, 72, 48]]))
    assert dataset.report.counts["size_mismatch"] == 1
    with pytest.raises(DatasetError, match="decodes to height x width"):
        CocoDetection(_coco([_ann([6, 4, 30, 20])]), tmp_path, strict=True)[0]


def _portrait_photo(tmp_path: Path) -> Path:
    """A 40 x 60 (h x w) grid whose EXIF tag (6) shows it turned to 60 x 40, upright: its top
    stored row (red) becomes the right displayed column."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:4] = (255, 0, 0)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "photo.png", exif=exif)
    return tmp_path / "photo.png"


def test_exif_turned_images_share_the_frame_of_their_boxes(tmp_path):
    _portrait_photo(tmp_path)
    # Annotated as displayed (60 x 40, the red band is the right column x in [36, 40)): image
    # and box come upright, with no size warning and nothing stretched.
    shown = {"id": 1, "file_name": "photo.png", "height": 60, "width": 40}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDetection(_coco([_ann([36, 0, 4, 60])], images=[shown]), tmp_path)
        image, target = dataset[0]
    assert image.shape == (3, 60, 40) and target.size == (60, 40)
    x0, _, x1, _ = (round(float(v)) for v in target.boxes_xyxy()[0])
    assert image[0, :, x0:x1].min() == 1.0 and image[0, :, : x0 - 1].max() == 0.0  # box on red
    # A json that states the stored size (an exporter that ignored the tag): the stored frame.
    stored = {"id": 1, "file_name": "photo.png", "height": 40, "width": 60}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CocoDetection(_coco([_ann([0, 0, 60, 4])], images=[stored]), tmp_path)
        image, target = dataset[0]
    assert image.shape == (3, 40, 60) and image[0, :4].min() == 1.0
    assert dataset.report.counts["exif_stored_frame"] == 1


def test_unreadable_image_names_the_json_the_image_and_the_fix(tmp_path):
    (tmp_path / "a.png").write_text("not a png")
    (tmp_path / "ann.json").write_text(json.dumps(_coco()))
    dataset = CocoDetection(tmp_path / "ann.json")
    with pytest.raises(DatasetError, match=r"ann\.json, image id 1: .*a\.png is not an image"):
        dataset[0]
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a\.png does not exist"):
        dataset.load_image(0)


# --- fuzz: anything malformed is a DatasetError or loads, nothing else --------------------------

_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
)
_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3),
)
_odd = st.integers(-3, 70) | st.floats(-5, 80) | _values


@st.composite
def _near_coco(draw) -> dict:
    """A valid small COCO dict, then some of its fields replaced by odd values or keys removed."""
    sizes = draw(st.lists(st.tuples(st.integers(1, 80), st.integers(1, 80)), max_size=3))
    images = [
        {"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w}
        for i, (h, w) in enumerate(sizes)
    ]
    category_ids = draw(st.lists(st.integers(1, 6), unique=True, max_size=3))
    categories = [{"id": c, "name": f"c{c}"} for c in category_ids]
    image_ids, known = [im["id"] for im in images] or [1], category_ids or [1]
    coords = st.lists(st.integers(-10, 90) | st.floats(-10, 90), min_size=4, max_size=4)
    boxes = st.tuples(
        st.integers(0, 40), st.integers(0, 40), st.integers(1, 40), st.integers(1, 40)
    )
    annotations = [
        {
            "image_id": draw(st.sampled_from(image_ids)),
            "category_id": draw(st.sampled_from(known)),
            "bbox": draw(boxes.map(list) | coords | _odd),
            **draw(
                st.fixed_dictionaries(
                    {},
                    optional={"id": _odd, "iscrowd": st.sampled_from([0, 1]) | _odd, "area": _odd},
                )
            ),
        }
        for _ in range(draw(st.integers(0, 8)))
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    for _ in range(draw(st.integers(0, 3))):
        records = [
            r for v in data.values() if isinstance(v, list) for r in v if isinstance(r, dict)
        ]
        if records and draw(st.booleans()):
            record = draw(st.sampled_from(records))
            record[draw(st.sampled_from(sorted({*record, "split", "coco_url"})))] = draw(_odd)
        elif data:
            key = draw(st.sampled_from(sorted(data)))
            if draw(st.booleans()):
                del data[key]
            else:
                data[key] = draw(_odd)
    return data


def _load_everything(source) -> None:
    try:
        dataset = _quiet(source)
    except DatasetError:
        return
    for index in range(len(dataset)):
        target = dataset.target(index)
        assert len(target) == len(dataset.annotations(index))
        assert bool(((target.boxes_cxcywh >= 0) & (target.boxes_cxcywh <= 1)).all())
    dataset.instances()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_near_coco() | _values)
def test_fuzz_structures_raise_dataset_error_or_load(data):
    _load_everything(data)


@settings(max_examples=60)
@given(st.binary(max_size=40) | _near_coco().map(lambda d: json.dumps(d).encode()))
def test_fuzz_files_raise_dataset_error_or_load(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.json"
        path.write_bytes(content)
        _load_everything(path)
