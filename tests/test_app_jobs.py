"""The app's background fine-tune: boxes drawn on several images -> a COCO training set -> one
``adapt`` process at a time, with its phase, progress and cancel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workbench.app.jobs import AdaptJobs, TrainingSet
from workbench.data.coco import CocoDetection
from workbench.inputs import InputError

REPO = Path(__file__).resolve().parents[1]
BOXES = {  # from BCCD's own annotations of these images
    "BloodImage_00000.jpg": [((260, 177, 491, 376), "WBC"), ((78, 336, 184, 435), "RBC")],
    "BloodImage_00001.jpg": [((68, 315, 286, 480), "WBC")],
    "BloodImage_00002.jpg": [((147, 182, 412, 433), "WBC")],
}


def training_set(bccd_voc: Path, folder: Path) -> TrainingSet:
    drawn = TrainingSet(folder)
    for name, boxes in BOXES.items():
        drawn.add(bccd_voc / "JPEGImages" / name, boxes)
    return drawn


def test_boxes_drawn_on_several_images_become_a_coco_set(bccd_voc, tmp_path):
    drawn = TrainingSet(tmp_path / "set")
    drawn.add(bccd_voc / "JPEGImages" / "BloodImage_00000.jpg", BOXES["BloodImage_00000.jpg"])
    with pytest.raises(InputError, match=r"at least 2 images .* 1 so far"):
        drawn.ready()
    drawn = training_set(bccd_voc, tmp_path / "set")
    # Drawing again on an image replaces its boxes instead of adding the image twice.
    drawn.add(bccd_voc / "JPEGImages" / "BloodImage_00001.jpg", [((10, 10, 50, 60), "RBC")])
    data = CocoDetection(drawn.ready())
    assert len(data) == 3 and drawn.counts() == {"WBC": 2, "RBC": 2}
    names = {c.label: c.name for c in data.categories}
    target = data.target(0)
    got = sorted(
        (names[int(label)], [round(v) for v in box])
        for label, box in zip(
            target.labels, target.boxes_xyxy(target.orig_size).tolist(), strict=True
        )
    )
    assert got == [("RBC", [78, 336, 184, 435]), ("WBC", [260, 177, 491, 376])]
    assert data.load_image(2).shape[-2:] == (480, 640)
    with pytest.raises(InputError, match=r"the box 'RBC' \[600, 10, 700, 60\] is not inside"):
        drawn.add(bccd_voc / "JPEGImages" / "BloodImage_00003.jpg", [((600, 10, 700, 60), "RBC")])
    with pytest.raises(InputError, match="draw at least one box"):
        drawn.add(bccd_voc / "JPEGImages" / "BloodImage_00003.jpg", [])


def _wait_for(predicate, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError("the job did not get there")


@pytest.mark.slow
def test_one_job_at_a_time_and_cancel_stops_its_whole_process_group(bccd_voc, tmp_path):
    drawn = training_set(bccd_voc, tmp_path / "set")
    jobs = AdaptJobs(tmp_path / "jobs")
    assert jobs.state().status == "idle"
    out = jobs.start(drawn.ready(), REPO / "models" / "sft", minutes=5)
    with pytest.raises(InputError, match="already running"):
        jobs.start(drawn.ready(), REPO / "models" / "sft")
    state = _wait_for(lambda: (s := jobs.state()).phase.startswith("measuring") and s)
    assert state.status == "running" and state.out == out and "adapting" in state.log
    pid = jobs._process.pid
    assert jobs.cancel()
    state = jobs.state()
    assert state.status == "cancelled" and not state.result
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of the group is left
    assert not jobs.cancel()  # nothing to cancel now
    # A cancelled run leaves its folder for inspection; the next job gets its own.
    # A job that fails says why in its phase.
    again = jobs.start(drawn.ready(), tmp_path / "no-model", minutes=5)
    assert again != out
    state = _wait_for(lambda: (s := jobs.state()).status != "running" and s)
    assert state.status == "failed" and "error:" in state.phase and "no-model" in state.phase


def test_a_zipped_dataset_unpacks_to_what_adapt_reads_and_never_outside(tmp_path, bccd_voc):
    import zipfile

    from workbench.app.jobs import unpack_dataset

    good = tmp_path / "cells.zip"
    with zipfile.ZipFile(good, "w") as z:
        for i in range(3):
            name = f"BloodImage_0000{i}"
            z.write(bccd_voc / "JPEGImages" / f"{name}.jpg", f"cells/images/{name}.jpg")
            z.write(bccd_voc / "Annotations" / f"{name}.xml", f"cells/annotations/{name}.xml")
    folder = unpack_dataset(good, tmp_path / "a")
    assert folder == (tmp_path / "a" / "cells").resolve() and len(list(folder.rglob("*.xml"))) == 3
    coco = tmp_path / "coco.zip"
    with zipfile.ZipFile(coco, "w") as z:
        z.writestr("labels.json", "{}")
        z.writestr("images/a.jpg", b"")
    assert unpack_dataset(coco, tmp_path / "b").name == "labels.json"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(InputError, match="points outside the archive"):
        unpack_dataset(evil, tmp_path / "c")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "not.zip").write_text("plain text")
    with pytest.raises(InputError, match="not a zip archive"):
        unpack_dataset(tmp_path / "not.zip", tmp_path / "d")


def test_drawn_boxes_with_a_negative_class_are_refused(bccd_voc, tmp_path):
    from workbench.app.jobs import add_drawn

    drawn = TrainingSet(tmp_path / "set")
    image = str(bccd_voc / "JPEGImages" / "BloodImage_00000.jpg")
    box = {"xmin": 10, "ymin": 10, "xmax": 90, "ymax": 80}
    with pytest.raises(InputError, match="is a negative class"):
        add_drawn(drawn, {"image": image, "boxes": [{**box, "label": "-RBC"}]}, 2048)
    said = add_drawn(drawn, {"image": image, "boxes": [{**box, "label": "RBC"}]}, 2048)
    assert said == "1 image in the training set; boxes: RBC 1"
    with pytest.raises(InputError, match="upload an image on this tab"):
        add_drawn(drawn, None, 2048)


def test_progress_counts_against_the_re_planned_steps_once_there_are_some(tmp_path):
    from workbench.app.jobs import _training_progress

    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(f'{{"step": {s}}}' for s in range(25)) + '\n{"step": 2'  # a line being written
    )
    record = {"plan": {"steps": 100}}
    assert _training_progress(tmp_path, record) == 0.25
    record["replans"] = [{"steps": 80}, {"steps": 50}]
    assert _training_progress(tmp_path, record) == 0.5
