"""dataset_stats / format_stats: counts match the annotations; broken images listed, not raised."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from workbench.data.coco import CocoDetection, DatasetWarning
from workbench.data.dataset import Category, DetectionDataset, Instance, LoadReport, make_target
from workbench.data.stats import dataset_stats, format_stats
from workbench.data.voc import convert_voc


def _ann(id, image_id, category_id, bbox, **extra):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


@pytest.fixture
def coco_dataset(tmp_path) -> CocoDetection:
    """4 images (ok, resized copy, text file, missing), 3 categories, 7 annotations."""
    Image.new("RGB", (60, 40)).save(tmp_path / "ok.png")
    Image.new("RGB", (120, 80)).save(tmp_path / "resized.png")  # json says 60 x 40
    (tmp_path / "text.jpg").write_text("not an image")
    images = [
        {"id": i, "file_name": name, "width": 60, "height": 40}
        for i, name in enumerate(["ok.png", "resized.png", "text.jpg", "missing.png"], start=1)
    ]
    categories = [
        {"id": 5, "name": "wbc", "split": "base"},
        {"id": 2, "name": "rbc", "split": "novel"},
        {"id": 9, "name": "plt"},
    ]
    annotations = [
        _ann(1, 1, 2, [0, 0, 10, 20]),
        _ann(2, 1, 2, [10, 10, 3, 30]),  # tiny: 3 px wide
        _ann(3, 2, 2, [5, 5, 30, 10]),
        _ann(4, 2, 5, [50, 0, 20, 8]),  # clipped to 10 x 8
        _ann(5, 2, 5, [0, 0, 60, 40], iscrowd=1),
        _ann(6, 3, 5, [100, 100, 5, 5]),  # outside: dropped
        _ann(7, 3, 5, [1, 1, 4, 4]),
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        return CocoDetection(data, tmp_path)


def test_counts_categories_and_box_sizes(coco_dataset):
    stats = dataset_stats(coco_dataset, check_images=False)
    assert (stats["num_images"], stats["num_annotations"], stats["num_categories"]) == (4, 6, 3)
    assert stats["images_without_annotations"] == 1 and stats["crowd_boxes"] == 1
    rows = [(c["name"], c["split"], c["instances"], c["images"]) for c in stats["categories"]]
    # Rows in label order (ascending category id); crowd regions are not instances.
    assert rows == [("rbc", "novel", 3, 2), ("wbc", "base", 2, 2), ("plt", None, 0, 0)]
    sizes = stats["box_sizes"]
    # Non-crowd widths 10, 3, 30, 10, 4 and heights 20, 30, 10, 8, 4.
    assert sizes["width"] == {"min": 3.0, "median": 10.0, "max": 30.0}
    assert sizes["height"] == {"min": 4.0, "median": 10.0, "max": 30.0}
    assert sizes["tiny_boxes"] == 1
    assert stats["load_report"]["clipped_boxes"] == 1
    assert stats["load_report"]["dropped_outside"] == 1
    assert "unreadable_images" not in stats


def test_check_images_lists_unreadable_files_without_raising(coco_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # load_image itself never warns about sizes
        stats = dataset_stats(coco_dataset)
    assert stats["images_checked"] == 4 and stats["size_mismatches"] == 1
    bad = {b["file_name"]: b["error"] for b in stats["unreadable_images"]}
    assert sorted(bad) == ["missing.png", "text.jpg"]
    assert "DatasetError" in bad["text.jpg"] and "is not an image file" in bad["text.jpg"]
    assert "missing.png does not exist" in bad["missing.png"]


def test_format_stats_shows_the_table_and_the_broken_files(coco_dataset):
    text = format_stats(dataset_stats(coco_dataset))
    assert "images: 4   annotations: 6   categories: 3" in text
    assert any(line.split()[:3] == ["0", "2", "rbc"] for line in text.splitlines())
    assert "tiny boxes (< 4 px): 1" in text
    assert "clipped_boxes=1" in text and "dropped_outside=1" in text
    assert "unreadable: 2, size differs from annotation: 1" in text
    assert "text.jpg: DatasetError" in text


class _TwoBoxes:
    """The smallest DetectionDataset: one image, two boxes, an image that fails to load."""

    def __init__(self):
        self.categories = [Category(id=1, name="thing", label=0)]
        self.report = LoadReport()

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.load_image(index), self.target(index)

    def load_image(self, index):
        raise RuntimeError("camera unplugged")

    def target(self, index):
        boxes = [{"bbox": [0, 0, 2, 2], "category_id": 1}, {"bbox": [0, 0, 8, 6], "category_id": 1}]
        return make_target(boxes, 0, (10, 10), {1: 0})

    def image_info(self, index):
        return {"id": 0, "file_name": "x.png", "width": 10, "height": 10}

    def instances(self):
        return [
            Instance(0, 0, 1, 0, (0.0, 0.0, 2.0, 2.0)),
            Instance(0, 0, 2, 0, (0.0, 0.0, 8.0, 6.0)),
        ]


def test_any_detection_dataset_works_and_any_load_error_is_listed():
    dataset = _TwoBoxes()
    assert isinstance(dataset, DetectionDataset)
    stats = dataset_stats(dataset)
    assert stats["box_sizes"]["width"] == {"min": 2.0, "median": 5.0, "max": 8.0}
    assert stats["box_sizes"]["tiny_boxes"] == 1
    assert stats["unreadable_images"] == [
        {"index": 0, "image_id": 0, "file_name": "x.png", "error": "RuntimeError: camera unplugged"}
    ]
    assert "load repairs: none" in format_stats(stats)


def test_empty_dataset():
    dataset = CocoDetection({"images": [], "annotations": [], "categories": []})
    stats = dataset_stats(dataset)
    assert stats["box_sizes"]["width"] == {"min": None, "median": None, "max": None}
    assert "box width  px: min -" in format_stats(stats)


def test_bccd_statistics(bccd_voc, tmp_path):
    out = convert_voc(bccd_voc, tmp_path, link_images=True)
    stats = dataset_stats(CocoDetection(out["annotations"]), check_images=False)
    counts = {c["name"]: c["instances"] for c in stats["categories"]}
    assert counts == {"Platelets": 361, "RBC": 4155, "WBC": 372}
    assert stats["images_without_annotations"] == 0
    # The two single-point VOC boxes are the only boxes under 4 px, and they are 1 x 1.
    assert stats["box_sizes"]["tiny_boxes"] == 2
    assert stats["box_sizes"]["width"]["min"] == stats["box_sizes"]["height"]["min"] == 1.0
    assert [c["images"] for c in stats["categories"]] == [201, 349, 358]  # of 364 images
