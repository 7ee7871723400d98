"""The ``trees`` source: deepforest's real tree boxes, tiled, split by site, reproducible."""

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from workbench.data import trees
from workbench.data.coco import CocoDetection
from workbench.data.dataset import DatasetError
from workbench.data.sources import locate

# (tiles, trees, crowd regions) per split, as workbench/data/trees.py and the README state them.
COUNTS = {"train": (35, 589, 138), "val": (9, 271, 59), "test": (1, 61, 0), "all": (45, 921, 197)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The source located once from the installed package into a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_DATA", str(cache))
        mp.delenv("WORKBENCH_TREES", raising=False)
        found = {split: locate("trees", split) for split in COUNTS}
    return found


def _site(file_name: str) -> str:
    return Path(file_name).name.rsplit("_x", 1)[0]


def test_splits_hold_the_documented_counts_and_share_no_source_image(prepared):
    sites = {}
    for split, found in prepared.items():
        data = json.loads(found.json_path.read_text())
        crowd = sum(a["iscrowd"] for a in data["annotations"])
        got = (len(data["images"]), len(data["annotations"]) - crowd, crowd)
        assert got == COUNTS[split], split
        assert [c["name"] for c in data["categories"]] == ["tree"]
        sites[split] = {_site(im["file_name"]) for im in data["images"]}
    assert sites["train"] == {"2019_YELL_2_528000_4978000_image_crop2", "SOAP_061"}
    assert sites["val"] == {"2019_YELL_2_541000_4977000_image_crop"}
    assert sites["test"] == {"OSBS_029"}
    assert sites["all"] == sites["train"] | sites["val"] | sites["test"]


def test_every_box_lies_inside_its_tile_with_positive_size(prepared):
    data = json.loads(prepared["all"].json_path.read_text())
    size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    assert all(min(wh) >= 300 and max(wh) <= 420 for wh in size.values())
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = size[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0, ann
        assert x + w <= width and y + h <= height, ann
    dataset = CocoDetection(prepared["val"].json_path, prepared["val"].image_root)
    info = dataset.image_info(0)
    with Image.open(prepared["val"].image_root / info["file_name"]) as image:
        assert image.size == (info["width"], info["height"]) == (416, 345)
    assert len(dataset.target(0)) > 0


def test_a_second_preparation_is_byte_identical(prepared, tmp_path):
    first = prepared["all"].json_path.parent
    trees.prepare_trees(trees.package_data(), tmp_path, False)
    for name in ("annotations.json", "train.json", "val.json", "test.json"):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name
    tiles = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert tiles == sorted(p.name for p in (first / "images").iterdir())
    assert len(tiles) == COUNTS["all"][0]
    for name in tiles[:3]:
        assert (tmp_path / "images" / name).read_bytes() == (first / "images" / name).read_bytes()


def test_tiles_cover_each_side_without_overlap_or_slivers():
    for length in (400, 1035, 1249, 2299, 2472):
        parts = trees.cuts(length)
        assert parts[0][0] == 0 and parts[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert all(300 <= end - start <= 420 for start, end in parts)


def test_a_tile_keeps_a_box_as_a_tree_only_when_most_of_it_is_inside():
    # 100 px wide boxes crossing the tile's right edge at x = 400: 70 % and 50 % inside.
    rows = trees.tile_boxes([[330, 0, 430, 10], [350, 20, 450, 30]], 0, 0, 400, 400)
    assert rows == [([330, 0, 70, 10], False), ([350, 20, 50, 10], True)]
    assert trees.tile_boxes([[400, 0, 430, 10]], 0, 0, 400, 400) == []  # only touches it


def test_without_the_package_files_the_error_names_the_install(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_TREES", str(empty))
    with pytest.raises(DatasetError, match=r"pip install --no-deps deepforest==2\.1\.0"):
        locate("trees", "train")
    assert not (tmp_path / "cache" / "trees").exists()
    assert not list((tmp_path / "cache").glob(".prepare-*"))  # no partial cache left
    with pytest.raises(DatasetError, match=r"pip install --no-deps deepforest==2\.1\.0"):
        trees.package_data("deepforest-not-installed")
