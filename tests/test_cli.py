"""The data commands of the README, run as a user runs them (real subprocesses, real files)."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from testing_constants import REPO

from workbench import viz


def run(*args, ok=True):
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", *map(str, args)], capture_output=True, text=True
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_convert_voc_writes_bccd_as_coco_with_its_splits(tmp_path, bccd_voc):
    run("data", "convert-voc", bccd_voc, "--out", tmp_path / "bccd", "--link-images")
    coco = COCO(str(tmp_path / "bccd" / "annotations.json"))
    assert len(coco.getImgIds()) == 364
    assert len(coco.getCatIds()) == 3
    assert len(coco.getAnnIds()) == 4888
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"RBC", "WBC", "Platelets"}
    split_images = {}
    for split in ("train", "val", "test"):
        data = json.loads((tmp_path / "bccd" / f"{split}.json").read_text())
        split_images[split] = {im["file_name"] for im in data["images"]}
    assert [len(v) for v in split_images.values()] == [205, 87, 72]
    assert (
        not split_images["train"] & split_images["val"]
        and not split_images["val"] & split_images["test"]
    )
    # every referenced image is reachable from the json's folder
    for image in coco.loadImgs(coco.getImgIds()[:5]):
        assert (tmp_path / "bccd" / image["file_name"]).is_file()


@pytest.mark.slow
def test_make_shapes_is_loadable_and_byte_identical_for_a_seed(tmp_path):
    for name in ("a", "b"):
        run("data", "make-shapes", "--out", tmp_path / name, "--images", 200, "--seed", 0)
    json_a = (tmp_path / "a" / "annotations.json").read_bytes()
    assert json_a == (tmp_path / "b" / "annotations.json").read_bytes()
    coco = COCO(str(tmp_path / "a" / "annotations.json"))
    assert len(coco.getImgIds()) == 200 and len(coco.getCatIds()) >= 24
    assert len(coco.getAnnIds()) >= 200 * 3
    run("data", "make-shapes", "--out", tmp_path / "c", "--images", 5, "--seed", 1)
    other = json.loads((tmp_path / "c" / "annotations.json").read_text())["annotations"]
    first = json.loads(json_a)["annotations"]
    assert [a["bbox"] for a in other] != [a["bbox"] for a in first[: len(other)]]


def test_stats_reports_counts_and_repairs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), "white").save(images / "ok.png")
    (images / "broken.png").write_bytes(b"not a png")
    data = {
        "images": [
            {"id": 1, "file_name": "images/ok.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "images/broken.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 20, 30, 30]},  # clipped
            {"id": 3, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        ],
        "categories": [{"id": 7, "name": "cell"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    proc = run("data", "stats", tmp_path / "a.json", "--json", ok=False)
    assert proc.returncode == 1  # an unreadable image is a failure the caller can see
    stats = json.loads(proc.stdout)
    assert stats["num_images"] == 2 and stats["num_annotations"] == 2
    assert (
        stats["load_report"]["clipped_boxes"] == 1
        and stats["load_report"]["dropped_unknown_category"] == 1
    )
    assert [u["file_name"] for u in stats["unreadable_images"]] == ["images/broken.png"]
    text = run("data", "stats", tmp_path / "a.json", ok=False).stdout
    assert "broken.png" in text and "clipped" in text


def test_show_draws_the_boxes_into_a_png(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (255, 255, 255)).save(images / "white.png")
    data = {
        "images": [{"id": 1, "file_name": "images/white.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 20]}],
        "categories": [{"id": 3, "name": "thing"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    run("data", "show", tmp_path / "a.json", "--out", tmp_path / "out" / "show.png", "--columns", 1)
    png = np.asarray(Image.open(tmp_path / "out" / "show.png").convert("RGB"))
    pad = 4  # image_grid's margin
    colour = np.array(viz.color_for(0))
    # the right edge of the box (x = 10 + 30) has the label colour; the centre is untouched
    assert (png[pad + 35, pad + 40] == colour).all()
    assert (png[pad + 30, pad + 25] == 255).all()


def test_errors_are_one_clear_line(tmp_path):
    (tmp_path / "bad.json").write_text("{ not json")
    proc = run("data", "stats", tmp_path / "bad.json", ok=False)
    assert proc.returncode == 2
    assert "bad.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("data", "show", "--source", "cooc", "--out", tmp_path / "x.png", ok=False)
    assert proc.returncode == 2 and "did you mean 'coco'" in proc.stderr
    proc = run("data", "convert-voc", tmp_path / "nowhere", "--out", tmp_path / "o", ok=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_sources_lists_every_named_dataset():
    out = run("data", "sources").stdout
    for name in ("shapes", "bccd", "coco", "lvis", "odinw/<name>"):
        assert name in out


@pytest.mark.slow
def test_eval_says_what_it_evaluates_before_it_starts(tmp_path, bccd_voc):
    checkpoint = REPO / "models" / "sft"  # trained on shapes+bccd; read only
    data = json.loads((checkpoint / "checkpoint.json").read_text())["full_config"]["data"]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        overrides = ["eval.max_images=1", "eval.protocols=[interactive]", "eval.exemplar_draws=1"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench", "eval", str(checkpoint), *overrides],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "WORKBENCH_BCCD": str(bccd_voc)},
        )
        first = proc.stdout.readline()
        evaluating = proc.poll() is None  # the line came out while the evaluation was to come
        rest, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.read_text()[-3000:]
    assert evaluating, "the line came out only when the process ended"
    available = data["shapes_val_images"] + 87  # + BCCD's val split (see test_convert_voc_...)
    assert first == (
        f"evaluating {checkpoint} on {data['name']} split 'val': 1 of {available} images "
        f"(eval.max_images=1), protocols interactive, at {data['min_size']}/{data['max_size']} px "
        "(config: the checkpoint's own run config, with eval.max_images=1 "
        "eval.protocols=[interactive] eval.exemplar_draws=1)\n"
    )
    assert data["name"] == "shapes+bccd"
    lines = rest.splitlines()  # the evaluation's own report follows
    assert lines[0] == f"split 'val': 1 of {available} images"
    assert lines[1].startswith("interactive: AP ")


def test_fiftyone_evaluate_and_launch_show_their_defaults_in_help():
    from workbench.cli import build_parser

    def subparsers(parser):
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return action.choices

    fiftyone = subparsers(build_parser())["fiftyone"]
    for command in ("evaluate", "launch"):
        parser = subparsers(fiftyone)[command]
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:  # positionals, flags, --help
                continue
            assert "(default: " in action.help, (command, action.option_strings)
            if action.default is not None:
                assert f"(default: {action.default}" in text, (command, action.option_strings)
    launch = " ".join(subparsers(fiftyone)["launch"].format_help().split())
    assert "(default: 5151)" in launch and "(default: 127.0.0.1," in launch
