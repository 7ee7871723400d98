"""Closing the loop: a folder's detections -> FiftyOne (real database) -> tags a reviewer sets
in the App -> a corrected COCO json that ``adapt`` reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from testing_constants import cli_in_process as cli

from workbench.adapt import prepare_data
from workbench.data.coco import CocoDetection

REPO = Path(__file__).resolve().parents[1]
NAME = "test-review"


@pytest.fixture(scope="module")
def fo():
    import fiftyone

    if fiftyone.config.database_dir != os.environ["FIFTYONE_DATABASE_DIR"]:
        pytest.fail(f"fiftyone uses {fiftyone.config.database_dir}, not the test database")
    from workbench.integrations.fiftyone_db import check_database

    check_database()
    return fiftyone


@pytest.fixture(scope="module")
def proposals(tmp_path_factory, bccd_voc):
    """``predict models/sft FOLDER`` on 5 BCCD photos, prompted by one RBC box of the first."""
    root = tmp_path_factory.mktemp("review")
    photos, xml = root / "images", root / "annotations"  # a LabelImg folder
    photos.mkdir()
    xml.mkdir()
    for i in range(5):
        shutil.copy(bccd_voc / "JPEGImages" / f"BloodImage_0000{i}.jpg", photos)
        shutil.copy(bccd_voc / "Annotations" / f"BloodImage_0000{i}.xml", xml)
    dets = root / "dets.json"
    from workbench.cli import main

    status = main(
        [
            "predict", str(REPO / "models" / "sft"), str(photos), "--reference",
            str(photos / "BloodImage_00000.jpg"), "--box", "78,336,184,435:RBC", "--out",
            str(dets), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    return photos, dets


def test_tags_set_in_the_app_become_a_corrected_coco_json_adapt_reads(
    fo, proposals, capsys, tmp_path
):
    photos, dets = proposals
    proposed = json.loads(dets.read_text())
    assert len(proposed["annotations"]) >= 3
    status, said, err = cli(capsys, "fiftyone", "review", dets, "--images", photos, "--name", NAME)
    assert status == 0, err
    assert f"5 images, {len(proposed['annotations'])} boxes in field 'labels'" in said
    ds = fo.load_dataset(NAME)
    first = ds.sort_by("file_name").first()
    boxes = first["labels"].detections
    assert len(boxes) >= 2 and all(b.confidence is not None for b in boxes)
    # What a reviewer does in the App: tag one box wrong, one as another class, the image checked.
    ds.select_labels(ids=[boxes[0].id], fields="labels").tag_labels("reject")
    ds.select_labels(ids=[boxes[1].id], fields="labels").tag_labels("is:WBC")
    ds.select(first.id).tag_samples("reviewed")
    # Loading the same detections again keeps every tag.
    status, said, _ = cli(capsys, "fiftyone", "review", dets, "--images", photos, "--name", NAME)
    assert status == 0 and "'reject': 1" in said and "reviewed images: 1" in said
    assert ds.count_label_tags("labels") == {"reject": 1, "is:WBC": 1}

    out = tmp_path / "labels" / "corrected.json"
    status, said, err = cli(
        capsys, "fiftyone", "export-labels", NAME, "--out", out, "--reviewed-only"
    )
    assert status == 0, err
    corrected = json.loads(out.read_text())
    assert [im["file_name"] for im in corrected["images"]] == [
        os.path.relpath(photos / "BloodImage_00000.jpg", out.parent)
    ]
    assert len(corrected["annotations"]) == len(boxes) - 1
    names = {c["id"]: c["name"] for c in corrected["categories"]}
    assert sorted(names[a["category_id"]] for a in corrected["annotations"]).count("WBC") == 1
    assert "1 rejected" in said and "1 relabelled" in said
    # The json finds its images from its own folder, and adapt splits it.
    labelled = CocoDetection(out)
    assert labelled.image_info(0)["width"] == 640 and labelled.load_image(0).shape[-2:] == (
        480,
        640,
    )
    status, _, err = cli(capsys, "fiftyone", "export-labels", NAME, "--out", out)
    assert status == 2 and "--force" in err  # an existing file is never replaced silently
    every = tmp_path / "every.json"
    assert cli(capsys, "fiftyone", "export-labels", NAME, "--out", every)[0] == 0
    assert len(json.loads(every.read_text())["images"]) == 5
    found = prepare_data(str(every), tmp_path / "adapt" / "data")
    assert len(CocoDetection(found.train_json)) + len(CocoDetection(found.val_json)) == 5


def test_other_detections_under_a_reviewed_name_are_refused_and_lose_nothing(
    fo, proposals, capsys, tmp_path
):
    photos, dets = proposals
    if not fo.dataset_exists(NAME):
        assert cli(capsys, "fiftyone", "review", dets, "--images", photos, "--name", NAME)[0] == 0
    before = fo.load_dataset(NAME).count_label_tags("labels")
    other = json.loads(dets.read_text())
    other["annotations"] = other["annotations"][:1]
    changed = tmp_path / "other.json"
    changed.write_text(json.dumps(other))
    status, _, err = cli(capsys, "fiftyone", "review", changed, "--images", photos, "--name", NAME)
    assert status == 2 and "already holds the detections dets.json" in err and "--name" in err
    assert fo.load_dataset(NAME).count_label_tags("labels") == before
    status, _, err = cli(
        capsys, "fiftyone", "export-labels", "no-such-dataset", "--out", tmp_path / "x.json"
    )
    assert status == 2 and "no FiftyOne dataset 'no-such-dataset'" in err


def test_a_reviewer_who_knows_the_truth_keeps_only_boxes_that_match_it(fo, proposals, tmp_path):
    from workbench.boxes import box_iou
    from workbench.data.voc import convert_voc
    from workbench.integrations.fiftyone_review import export_labels, review_dataset, tag_with_truth

    photos, dets = proposals
    truth = CocoDetection(convert_voc(photos.parent, tmp_path / "gt")["annotations"])
    ds = review_dataset(dets, photos, "test-review-truth", overwrite=True)
    tags = tag_with_truth(ds, truth)
    proposed = len(json.loads(dets.read_text())["annotations"])
    assert tags["reject"] >= 1 and len(ds.match_tags("reviewed")) == 5
    out = tmp_path / "corrected.json"
    counts = export_labels("test-review-truth", out, reviewed_only=True)
    assert counts["boxes"] == proposed - tags["reject"] and counts["rejected"] == tags["reject"]
    kept = CocoDetection(out)
    names = {c.label: c.name for c in kept.categories}
    true_names = {c.label: c.name for c in truth.categories}
    by_file = {Path(truth.image_info(i)["file_name"]).name: i for i in range(len(truth))}
    for index in range(len(kept)):
        got = kept.target(index)
        want = truth.target(by_file[Path(kept.image_info(index)["file_name"]).name])
        overlap = box_iou(got.boxes_xyxy(got.orig_size), want.boxes_xyxy(want.orig_size))
        for label, row in zip(got.labels.tolist(), overlap, strict=True):
            best = int(row.argmax())
            assert row[best] >= 0.5  # the kept box is a true object ...
            assert names[label] == true_names[int(want.labels[best])]  # ... of its class
