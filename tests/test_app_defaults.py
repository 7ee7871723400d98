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

import numpy as np
import pytest

from workbench.boxes import box_iou

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ["shapes/shapes_000000.png", "bccd/BloodImage_00021.jpg"]
THRESHOLD = 0.2  # the page's default (workbench/integrations/app_layout.py)
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


def ground_truth(example: str) -> tuple[np.ndarray, list[str]]:
    folder, name = example.split("/")
    coco = json.loads((REPO / "examples" / folder / "annotations.json").read_text())
    image = next(i for i in coco["images"] if Path(i["file_name"]).name == name)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    return boxes, [names[a["category_id"]] for a in anns]


def matched(found: np.ndarray, truth: np.ndarray) -> int:
    """Detections matched one-to-one to ground truth at IoU >= 0.5, best IoU first."""
    if not len(found) or not len(truth):
        return 0
    import torch

    iou = box_iou(torch.tensor(found, dtype=torch.float32), torch.tensor(truth).float())
    pairs = sorted(((float(iou[i, j]), i, j) for i in range(len(found))
                    for j in range(len(truth)) if iou[i, j] >= 0.5), reverse=True)  # fmt: skip
    used_d, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
    return len(used_d)


@pytest.mark.parametrize("example", EXAMPLES)
def test_default_models_find_the_prompted_objects_on_the_examples(url, example):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    info = client.predict(api_name="/model_info")
    assert all(info["models"][k]["available"] for k in ("sft", "grqo")), info
    target = client.predict(example, api_name="/load_example")[0]["value"]
    boxes = target["boxes"]
    assert boxes, "the example offers suggested prompt boxes"
    prompt = {"image": handle_file(str(REPO / "examples" / example.replace("/", "/images/"))),
              "boxes": boxes}  # fmt: skip
    *_, status = client.predict(prompt, None, "", THRESHOLD, api_name="/compare")
    assert status == "Detection done.", status
    exported, _ = client.predict(api_name="/export_coco")
    truth, truth_names = ground_truth(example)
    for path in (p for p in exported if p.endswith(".json")):
        coco = json.loads(Path(path).read_text())
        model = coco["info"]["description"].split()[0]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        hits = found = wanted = 0
        for name in set(names.values()):
            boxes = np.array([[x, y, x + w, y + h] for a in coco["annotations"]
                              if names[a["category_id"]] == name
                              for x, y, w, h in [a["bbox"]]]).reshape(-1, 4)  # fmt: skip
            truth_boxes = truth[[n == name for n in truth_names]]
            class_hits = matched(boxes, truth_boxes)
            assert class_hits >= 1, (model, name, "no object of the prompted class found")
            hits, found, wanted = hits + class_hits, found + len(boxes), wanted + len(truth_boxes)
        assert hits >= MIN_RECALL * wanted, (model, "recall", hits, wanted)
        assert hits >= MIN_PRECISION * found, (model, "precision", hits, found)
