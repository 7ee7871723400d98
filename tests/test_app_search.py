"""The app's "Search many images" tab, its handler called directly (no server) with the app's
default models on BCCD photos: counts, drawings and one COCO json that ``workbench eval`` scores,
the same json the folder command writes, skipped uploads named, and bad requests refused."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from testing_constants import REPO

import app
from workbench.annotate import annotate_folder
from workbench.app import handlers, search
from workbench.app.examples import scan_examples
from workbench.app.models import Models, Settings
from workbench.cli import main
from workbench.data.coco import CocoDetection
from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD

BCCD_VOC = REPO.parent / "shared" / "data" / "bccd" / "BCCD"  # as conftest's bccd_voc fixture
NAMES = ["BloodImage_00000.jpg", "BloodImage_00001.jpg", "BloodImage_00002.jpg"]
SETTINGS = Settings()
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")


@pytest.fixture(scope="module")
def models(bccd_voc) -> Models:
    models = Models.from_checkpoints(default_folder=app.MODELS_DIR)
    assert not models.problems(), models.problems()
    return models


def voc_boxes(name: str) -> list[tuple[str, list[float]]]:
    """``(class, [x0, y0, x1, y1])`` of every object BCCD annotates on image ``name``."""
    root = ET.parse(BCCD_VOC / "Annotations" / name.replace(".jpg", ".xml")).getroot()
    keys = ("xmin", "ymin", "xmax", "ymax")
    return [
        (o.findtext("name"), [float(o.find("bndbox").findtext(k)) for k in keys])
        for o in root.iter("object")
    ]


def image(name: str) -> str:
    return str(BCCD_VOC / "JPEGImages" / name)


def rbc_prompt() -> dict:
    """The main tab's target: the first BCCD photo with one of its annotated red cells drawn."""
    box = next(b for c, b in voc_boxes(NAMES[0]) if c == "RBC")
    drawn = dict(zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return {
        "image": {"path": image(NAMES[0]), "orig_name": NAMES[0]},
        "boxes": [drawn | {"label": "RBC"}],
    }


def run(models, uploads, prompts, *, settings=SETTINGS, session=None, model="grqo"):
    return search.search_images(
        models,
        session,
        uploads,
        False,
        model,
        prompts,
        SCORE_THRESHOLD,
        settings,
        {},
    )


def ground_truth_json(folder: Path) -> Path:
    """A COCO ground truth of the three photos: BCCD converted by ``workbench data convert-voc``,
    its other images left out."""
    assert main(["data", "convert-voc", str(BCCD_VOC), "--out", str(folder), "--link-images"]) == 0
    coco = json.loads((folder / "annotations.json").read_text())
    keep = {i["id"] for i in coco["images"] if Path(i["file_name"]).name in NAMES}
    coco["images"] = [i for i in coco["images"] if i["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    assert len(coco["images"]) == len(NAMES) and coco["annotations"]
    path = folder / "three.json"
    path.write_text(json.dumps(coco))
    return path


def test_search_counts_draws_and_writes_a_json_that_eval_scores(models, tmp_path):
    session, view, _ = run(models, [image(n) for n in NAMES], (rbc_prompt(), None, ""))
    coco = json.loads(Path(view.json_path).read_text())
    assert Path(view.json_path).parent.parent == session.folder  # the session's own folder
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (n, 640, 480) for n in NAMES
    ]
    assert coco["categories"] == [{"id": 1, "name": "RBC"}]
    per_image = [sum(a["image_id"] == i["id"] for a in coco["annotations"]) for i in coco["images"]]
    assert min(per_image) > 0  # red cells fill every BCCD photo
    total = len(coco["annotations"])
    assert view.headers == ["image", "RBC", "all classes"]
    assert view.rows == [[n, k, k] for n, k in zip(NAMES, per_image, strict=True)] + [
        ["total", total, total]
    ]
    assert [caption for _, caption in view.gallery] == [
        f"{n}: {k} RBC" for n, k in zip(NAMES, per_image, strict=True)
    ]
    drawn = Image.open(view.gallery[0][0])
    assert drawn.size == (640, 480) and drawn.getpixel((0, 0)) != (0, 0, 0)
    assert view.status.startswith(f"3 images, {total} detections ({total} RBC) by GRQO")
    assert all(a["score"] >= SCORE_THRESHOLD for a in coco["annotations"])

    out = tmp_path / "stats.json"
    gt = ground_truth_json(tmp_path / "bccd")
    assert main(["eval", "--detections", view.json_path, "--gt", str(gt), "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["stats"]["AP"] > 0 and stats["unmatched"]["images_not_in_gt"] == 0, stats


def test_search_writes_what_the_folder_command_writes(models, tmp_path):
    """The tab and ``workbench predict FOLDER`` (:func:`annotate_folder`) agree on the same
    prompts: the same images, boxes and scores."""
    session, view, _ = run(models, [image(n) for n in NAMES], (rbc_prompt(), None, ""))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(image(name), folder / name)
    slot = models.get("grqo")
    bank, _ = search.search_bank(slot, rbc_prompt(), None, "", session, SETTINGS)
    out = tmp_path / "dets.json"
    annotate_folder(
        slot.predictor,
        bank,
        folder,
        out,
        min_score=SCORE_THRESHOLD,
        merge_iou=MERGE_IOU,
        batch_size=search.SEARCH_BATCH,
        progress=False,
    )
    ours, theirs = json.loads(Path(view.json_path).read_text()), json.loads(out.read_text())
    for key in ("images", "categories", "annotations"):
        assert ours[key] == theirs[key], key
    assert len(CocoDetection(view.json_path, image_root=folder)) == 3  # a labels file too


def test_a_saved_bank_alone_searches_as_the_drawn_boxes_do(models):
    session, drawn, _ = run(models, [image(n) for n in NAMES[:2]], (rbc_prompt(), None, ""))
    session, *_ = handlers.save_bank(models, session, rbc_prompt(), None, "cells", SETTINGS)
    _, banked, _ = run(
        models, [image(n) for n in NAMES[:2]], (None, None, "cells"), session=session
    )
    assert banked.rows == drawn.rows and banked.rows[-1][1] > 0


def test_an_unreadable_upload_is_skipped_and_named(models, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    uploads = [image(NAMES[0]), {"path": str(bad), "orig_name": "bad.jpg"}, image(NAMES[1])]
    _, view, _ = run(models, uploads, (rbc_prompt(), None, ""), model="sft")
    assert view.status.startswith("2 images, ") and " by SFT at score >= 0.20" in view.status
    assert "; skipped: bad.jpg (is not an image the app can read" in view.status
    assert [row[0] for row in view.rows] == [NAMES[0], NAMES[1], "total"]
    coco = json.loads(Path(view.json_path).read_text())
    assert [i["file_name"] for i in coco["images"]] == NAMES[:2]
    with pytest.raises(InputError, match=r"none of the images could be read: bad\.jpg \(is not"):
        run(models, [str(bad)], (rbc_prompt(), None, ""))


def test_the_example_images_are_searched_when_ticked(models):
    examples = scan_examples(app.EXAMPLES_DIR)
    assert search.search_files(image(NAMES[0]), False, examples) == [(image(NAMES[0]), NAMES[0])]
    files = search.search_files([image(NAMES[0])], True, examples)
    assert [name for _, name in files] == [NAMES[0]] + [
        e.image_path.name for e in examples.values()
    ]
    assert all(Path(path).is_file() for path, _ in files)


EMPTY_TARGET = {"image": {"path": image(NAMES[0])}, "boxes": []}  # an image, no box drawn


@pytest.mark.parametrize(
    ("images", "drawn", "settings", "message"),
    [
        (1, None, SETTINGS, "no prompts to search for: draw a box"),
        (1, EMPTY_TARGET, SETTINGS, "no prompts to search for"),
        (0, "RBC", SETTINGS, "no images to search: upload images, or tick"),
        (3, "RBC", Settings(max_search_images=2), "3 images: the app searches at most 2 at once"),
    ],
)
def test_bad_search_requests_are_refused_with_the_fix(models, images, drawn, settings, message):
    target = rbc_prompt() if drawn == "RBC" else drawn
    with pytest.raises(InputError, match=message):
        run(models, [image(n) for n in NAMES[:images]], (target, None, ""), settings=settings)


def test_the_search_is_an_endpoint_with_named_parameters(models):
    endpoints = app.build_demo(models).get_api_info()["named_endpoints"]
    names = [p["parameter_name"] for p in endpoints["/search_images"]["parameters"]]
    assert names == [
        "target_image",
        "reference_image",
        "prompt_bank",
        "images",
        "use_examples",
        "model",
        "score_threshold",
        "merge_duplicates",
    ]
