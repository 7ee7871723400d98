"""`make app`'s job, end to end: ``python app.py`` with no arguments serves the committed default
models on 127.0.0.1, and on each bundled example, prompted with its suggested boxes at the page's
default score threshold, both models find most objects of the prompted classes, matched
one-to-one to the example's ground truth at IoU >= 0.5, and every prompted class at least once.

Precision is bounded loosely: BCCD's annotations miss many of the red cells in its photos, so
a correct detection of an unannotated cell counts as a false positive here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.coco_eval import match_counts
from workbench.postprocess import SCORE_THRESHOLD

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ["shapes/shapes_000000.png", "bccd/BloodImage_00021.jpg"]
THRESHOLD = SCORE_THRESHOLD  # the page's default
MIN_RECALL, MIN_PRECISION = 0.6, 0.1  # over the prompted classes of one example, per model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory, free_port):
    port = free_port()
    log = (tmp_path_factory.mktemp("app") / "app.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)], cwd=REPO, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(1)
    else:
        log.seek(0)
        proc.kill()
        pytest.fail(f"app.py did not start serving on port {port}:\n{log.read()[-3000:]}")
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(30)


def ground_truth(example: str, names: dict[int, str]) -> dict:
    """The example's COCO ground truth: its one image, its boxes of the classes in ``names``
    (the exported json's category ids), relabelled with those ids."""
    folder, file = example.split("/")
    coco = json.loads((REPO / "examples" / folder / "annotations.json").read_text())
    image = next(i for i in coco["images"] if Path(i["file_name"]).name == file)
    id_of = {name: i for i, name in names.items()}
    ours = {c["id"]: id_of.get(c["name"]) for c in coco["categories"]}
    anns = [
        {**a, "category_id": ours[a["category_id"]], "iscrowd": a.get("iscrowd", 0)}
        for a in coco["annotations"]
        if a["image_id"] == image["id"] and ours[a["category_id"]]
    ]
    return {"images": [image], "annotations": anns}


@pytest.mark.parametrize("example", EXAMPLES)
def test_default_models_find_the_prompted_objects_on_the_examples(url, example):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    info = client.predict(api_name="/model_info")
    assert all(info["models"][k]["available"] for k in ("sft", "grqo")), info
    # read at the size the models were trained at, as their checkpoints record
    assert all(info["models"][k]["input_size"] == [256, 342] for k in ("sft", "grqo")), info
    target = client.predict(example, api_name="/load_example")[0]
    boxes = target["boxes"]
    assert boxes, "the example offers suggested prompt boxes"
    prompt = {
        "image": handle_file(target["image"]),  # small ones come enlarged to draw on
        "boxes": boxes,
    }
    *_, status = client.predict(prompt, None, "", THRESHOLD, api_name="/compare")
    assert status.startswith(f"Searched **{Path(example).name}** for "), status
    exported, _ = client.predict(api_name="/export_coco")
    jsons = [json.loads(Path(p).read_text()) for p in exported if p.endswith(".json")]
    assert [c["info"]["description"].split()[0] for c in jsons] == ["SFT", "GRQO"]
    for coco in jsons:
        model = coco["info"]["description"].split()[0]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        assert names, (model, "the export names no prompted class")
        truth = ground_truth(example, names)
        image_id = truth["images"][0]["id"]
        results = [{**a, "image_id": image_id} for a in coco["annotations"]]
        totals = match_counts(truth, results)[image_id]  # COCO matching at IoU 0.5
        for category in names:  # every prompted class is found at least once
            one = [r for r in results if r["category_id"] == category]
            gt = {
                **truth,
                "annotations": [a for a in truth["annotations"] if a["category_id"] == category],
            }
            assert match_counts(gt, one)[image_id].tp >= 1, (model, names[category])
        assert totals.tp >= MIN_RECALL * totals.num_gt, (model, "recall", totals)
        assert totals.tp >= MIN_PRECISION * totals.num_detections, (model, "precision", totals)


ALL_EXAMPLES = sorted(
    f"{p.parent.parent.name}/{p.name}" for p in (REPO / "examples").glob("*/images/*")
)


@pytest.mark.parametrize("example", ALL_EXAMPLES)
def test_one_box_per_object_and_counts_equal_the_boxes_shown(url, example):
    """With the suggested prompts, no two shown boxes of one class overlap above the merge IoU,
    and the count table counts exactly the boxes shown (exported as shown)."""
    import torch
    from gradio_client import Client, handle_file

    from workbench.boxes import box_iou
    from workbench.postprocess import MERGE_IOU

    client = Client(url, verbose=False)
    target = client.predict(example, api_name="/load_example")[0]
    prompt = {
        "image": handle_file(target["image"]),  # small ones come enlarged to draw on
        "boxes": target["boxes"],
    }
    _, _, counts, summary, status = client.predict(prompt, None, "", THRESHOLD, api_name="/compare")
    assert "raw boxes before merging" in summary, summary
    exported, _ = client.predict(api_name="/export_coco")
    jsons = [json.loads(Path(p).read_text()) for p in exported if p.endswith(".json")]
    for column, coco in zip((1, 2), jsons, strict=True):
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for category, name in names.items():
            boxes = torch.tensor(
                [a["bbox"] for a in coco["annotations"] if a["category_id"] == category]
            ).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            iou = box_iou(boxes, boxes).fill_diagonal_(0)
            assert (float(iou.max()) if len(boxes) else 0.0) <= MERGE_IOU + 1e-6, (example, name)
            row = next(r for r in counts["data"] if r[0] == name)
            assert row[column] == len(boxes), (example, name, row)
            assert f"{len(boxes)} {name}" in status or len(boxes) == 0, status


def test_a_photo_of_an_unseen_domain_gets_a_status_naming_what_the_models_know(url):
    """A photo unlike shapes and blood cells: the status names the training domains (from the
    checkpoints) and each model's best score; at a threshold above it, what to try."""
    import matplotlib
    from gradio_client import Client, handle_file

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # 512x600
    client = Client(url, verbose=False)
    face = {"xmin": 190, "ymin": 120, "xmax": 330, "ymax": 300, "label": "face"}
    target = {"image": handle_file(str(photo)), "boxes": [face]}
    *_, status = client.predict(target, None, "", THRESHOLD, api_name="/compare")
    known = "trained on synthetic shapes (36 base categories, e.g. 'red solid circle') and BCCD"
    assert known in status, status
    assert status.count("best score") == 2, status
    *_, status = client.predict(0.99, api_name="/apply_threshold")
    assert status.count("found nothing scoring >= 0.99") == 2, status
    assert "lower the score threshold to" in status and "fine-tune a model" in status, status
