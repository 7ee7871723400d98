"""``predict CHECKPOINT FOLDER``: one COCO json of detections for a folder, read back by ``eval
--detections``, ``CocoDetection`` and ``data stats``; a killed run resumes without redoing
finished images; bad inputs are one line or a counted skip."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from testing_constants import cli_in_process as cli

from workbench.annotate import partial_path
from workbench.cli import main
from workbench.data.coco import CocoDetection
from workbench.model.build import build_detector, save_pretrained

SIZES = ["--min-size", 96, "--max-size", 128, "--no-progress"]


def one_error(capsys, *args) -> str:
    status, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """20 shapes images of 128 px under images/, ground truth in annotations.json, a tiny
    detector in model/ and a prompts file with one exemplar per class of the first image."""
    root = tmp_path_factory.mktemp("folder")
    assert main(["data", "make-shapes", "--out", str(root / "shapes"), "--images", "20",
                 "--image-size", "128"]) == 0  # fmt: skip
    save_pretrained(build_detector("tiny"), root / "model")
    gt = json.loads((root / "shapes" / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    entries: dict[str, list] = {}
    for ann in gt["annotations"]:
        if ann["image_id"] == gt["images"][0]["id"]:
            x, y, w, h = ann["bbox"]
            ex = {"image": f"shapes/{gt['images'][0]['file_name']}", "box": [x, y, x + w, y + h]}
            entries.setdefault(names[ann["category_id"]], []).append(ex)
    prompts = [{"name": n, "exemplars": e} for n, e in entries.items()]
    (root / "prompts.json").write_text(json.dumps(prompts))
    return root


@contextlib.contextmanager
def one_thread():
    """One torch thread (in process and in subprocesses): the tiny model is fastest so, and a
    busy machine does not slow it down by oversubscription. Restored afterwards."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def predict_args(shapes: Path) -> list:
    """Annotate the 20 shapes images with the prompts file, one image per call."""
    return ["predict", shapes / "model", shapes / "shapes" / "images", "--prompts",
            shapes / "prompts.json", "--min-score", 0.05, *SIZES, "--batch-size", 1]  # fmt: skip


@pytest.fixture(scope="module")
def annotated(shapes, tmp_path_factory) -> Path:
    """The json of a run of :func:`predict_args` (3 images per call)."""
    out = tmp_path_factory.mktemp("whole") / "dets.json"
    args = [*predict_args(shapes), "--batch-size", 3, "--out", out]
    with one_thread():
        assert main([str(a) for a in args]) == 0
    return out


def test_a_folder_becomes_a_coco_json_that_eval_scores(shapes, annotated, capsys, tmp_path):
    images, out = shapes / "shapes" / "images", annotated
    dets = json.loads(out.read_text())
    prompts = json.loads((shapes / "prompts.json").read_text())
    assert [c["name"] for c in dets["categories"]] == [p["name"] for p in prompts]
    assert [c["id"] for c in dets["categories"]] == list(range(1, len(prompts) + 1))
    assert [i["file_name"] for i in dets["images"]] == sorted(p.name for p in images.iterdir())
    assert all((i["width"], i["height"]) == (128, 128) for i in dets["images"])
    assert dets["annotations"] and not partial_path(out).exists()
    for a in dets["annotations"]:
        x, y, w, h = a["bbox"]
        assert min(x, y) >= 0 and max(x + w, y + h) <= 128.01 and a["iscrowd"] == 0
        assert 0.05 <= a["score"] <= 1 and a["area"] == pytest.approx(w * h, abs=0.05)
    # eval scores it against the ground truth of the same images (file names images/x.png).
    report = tmp_path / "ap.json"
    gt = shapes / "shapes" / "annotations.json"
    status, _, err = cli(capsys, "eval", "--detections", out, "--gt", gt, "--out", report)
    assert status == 0, err
    stats = json.loads(report.read_text())
    assert math.isfinite(stats["stats"]["AP"]) and 0 <= stats["stats"]["AP"] <= 1
    assert stats["unmatched"]["images_not_in_gt"] == 0
    assert stats["unmatched"]["detections_dropped"] == 0
    # A labels file for training and data stats (scores ignored), images under the folder.
    labels = CocoDetection(out, image_root=images)
    assert len(labels) == 20 and len(labels.instances()) == len(dets["annotations"])
    assert cli(capsys, "data", "stats", out, "--images", images)[0] == 0
    # An existing --out is refused without --force, and left as it was.
    before = out.read_bytes()
    line = one_error(capsys, *predict_args(shapes), "--out", out)
    assert "already exists; pass --force" in line and out.read_bytes() == before


def test_a_killed_run_resumes_where_it_stopped(shapes, capsys, tmp_path):
    # 60 images (the 20 in three sub-folders), so the run is still going when it is killed.
    folder = tmp_path / "photos"
    for sub in "abc":
        shutil.copytree(shapes / "shapes" / "images", folder / sub)
    args = predict_args(shapes)
    args[2] = folder
    out = tmp_path / "dets.json"
    sidecar = partial_path(out)
    argv = [sys.executable, "-m", "workbench", *map(str, args), "--out", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    while proc.poll() is None and (
        not sidecar.exists() or sidecar.read_text().count("\n") < 6  # settings + 5 images
    ):
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    finished = [json.loads(x)["file"] for x in sidecar.read_text().splitlines()[1:] if x]
    assert 5 <= len(finished) < 60
    # Other settings are refused, naming what differs; the progress is kept.
    line = one_error(capsys, *args, "--out", out, "--max-per-class", 2)
    assert "max_per_class: None -> 2" in line and "--force" in line and sidecar.exists()
    # The same command finishes the rest only, and the result is an uninterrupted run's.
    status, said, err = cli(capsys, *args, "--out", out)
    assert status == 0, err
    left = 60 - len(finished)
    assert f"{left} of 60 images predicted by this run ({len(finished)} done by" in said
    assert not sidecar.exists()
    assert cli(capsys, *args, "--out", tmp_path / "whole.json")[0] == 0
    resumed, whole = (json.loads(p.read_text()) for p in (out, tmp_path / "whole.json"))
    assert resumed["images"] == whole["images"] and resumed["annotations"] == whole["annotations"]
    assert resumed["images"][20]["file_name"] == "b/" + resumed["images"][0]["file_name"][2:]


def test_an_unreadable_image_is_skipped_counted_and_named(shapes, capsys, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), "white").save(folder / "a.PNG")
    Image.new("RGB", (50, 40), "gray").save(folder / "sub" / "b.jpg")
    (folder / "broken.png").write_bytes(b"<html>not an image</html>")
    (folder / "notes.txt").write_text("not an image either")
    out = tmp_path / "dets.json"
    status, said, err = cli(capsys, "predict", shapes / "model", folder, "--prompts",
                            shapes / "prompts.json", *SIZES, "--out", out, "--min-score", 0,
                            "--max-per-class", 2, "--batch-size", 2)  # fmt: skip
    assert status == 0, err
    assert "1 unreadable skipped" in said and "warning: skipped broken.png" in err
    dets = json.loads(out.read_text())
    per_class = Counter((a["image_id"], a["category_id"]) for a in dets["annotations"])
    assert set(per_class.values()) == {2}  # every class scores >= 0: exactly the cap each
    assert [(i["file_name"], i["width"]) for i in dets["images"]] == [
        ("a.PNG", 64),
        ("sub/b.jpg", 50),
    ]


def test_bad_folders_and_prompts_are_one_line(shapes, capsys, tmp_path):
    model, out = shapes / "model", tmp_path / "dets.json"
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "deep" / "readme.txt").write_text("x")
    prompts = ["--prompts", shapes / "prompts.json"]
    assert "holds no images" in one_error(capsys, "predict", model, empty, *prompts, "--out", out)
    images = shapes / "shapes" / "images"
    assert "no prompts" in one_error(capsys, "predict", model, images, "--out", out)
    line = one_error(capsys, "predict", model, images, "--box", "1,1,9,9:x", "--out", out)
    assert "--reference" in line
    line = one_error(capsys, "predict", model, images, *prompts, "--bank", "b.safetensors",
                     "--out", out)  # fmt: skip
    assert "pass one of them" in line
    ref = json.loads((shapes / "prompts.json").read_text())[0]["exemplars"][0]["image"]
    bad_files = {
        "[]": "holds no prompts",
        '{"name": 1': "not valid json (line 1",
        '{"name": "cat"}': "a list of classes",
        '[{"exemplars": []}]': 'needs a "name"',
        '[{"name": "cat"}]': 'needs "exemplars"',
        '[{"name": "cat", "exemplar": []}]': "unknown key(s) 'exemplar'",
        '[{"name": "cat", "exemplars": [{"image": "nope.png", "box": [1, 1, 5, 5]}]}]': "not found",
        f'[{{"name": "c", "exemplars": [{{"image": "{ref}", "box": [1, 1, 5]}}]}}]': "four numbers",
        f'[{{"name": "c", "exemplars": [{{"image": "{ref}", "box": [9, 1, 5, 5]}}]}}]': "no area",
        f'[{{"name": "a", "exemplars": [{{"image": "{ref}", "box": [1, 1, 5, 5]}}]}}, '
        f'{{"name": "a", "exemplars": [{{"image": "{ref}", "box": [1, 1, 5, 5]}}]}}]': "entry 0's",
    }
    for text, expected in bad_files.items():
        bad = shapes / "bad_prompts.json"
        bad.write_text(text)
        line = one_error(capsys, "predict", model, images, "--prompts", bad, "--out", out)
        assert expected in line and str(bad) in line, (text, line)
    assert not out.exists()


def test_prompts_a_bank_and_reference_boxes_give_the_same_detections(shapes, capsys, tmp_path):
    from workbench.predictor import Predictor
    from workbench.prompt_file import read_prompt_file

    entry = json.loads((shapes / "prompts.json").read_text())[0]
    entry["exemplars"] = entry["exemplars"][:1]
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{**entry, "exemplars": [{**entry["exemplars"][0],
                   "image": str(shapes / entry["exemplars"][0]["image"])}]}]))  # fmt: skip
    predictor = Predictor.from_checkpoint(shapes / "model", min_size=96, max_size=128)
    prompts, paths = read_prompt_file(one)
    from workbench.data.images import read_image

    bank = predictor.embed_prompts(prompts, {k: read_image(v) for k, v in paths.items()})
    bank_path = bank.save(tmp_path / "bank.safetensors")
    x0, y0, x1, y1 = entry["exemplars"][0]["box"]
    box = f"--box={x0},{y0},{x1},{y1}:{entry['name']}"
    common = [
        "predict",
        shapes / "model",
        shapes / "shapes" / "images",
        *SIZES,
        "--min-score",
        0.02,
    ]
    sources = {
        "prompts": ["--prompts", one],
        "bank": ["--bank", bank_path],
        "boxes": ["--reference", shapes / entry["exemplars"][0]["image"], box],
    }
    results = {}
    for name, flags in sources.items():
        status, _, err = cli(capsys, *common, *flags, "--out", tmp_path / f"{name}.json")
        assert status == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["annotations"]
    assert results["prompts"]
    # The same detections; the three paths embed the exemplar in differently ordered float
    # reductions, so a value may differ by one unit of its written rounding (0.01 px, 1e-5).
    for other in ("bank", "boxes"):
        assert len(results[other]) == len(results["prompts"]), other
        for a, b in zip(results["prompts"], results[other], strict=True):
            assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"]), other
            assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"], strict=True)) <= 0.011
            assert abs(a["score"] - b["score"]) <= 1.1e-5, (other, a, b)
    # A bank another model embedded is used, with a warning naming it.
    other = save_pretrained(build_detector("tiny"), tmp_path / "other")
    flags = ["--bank", bank_path, "--out", tmp_path / "other.json"]
    status, _, err = cli(capsys, "predict", other, *common[2:], *flags)
    assert status == 0 and "embedded by other weights" in err
