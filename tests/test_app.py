"""The app: every handler with tiny random models, then the server through gradio_client
(every public endpoint, bad input, 8 parallel clients)."""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import app
from app import EXAMPLES_DIR
from workbench.analysis import GroundTruth, query_table
from workbench.app import export, handlers, render
from workbench.app.examples import scan_examples
from workbench.app.inputs import BOX_KEYS, prompts_from, read_annotated, split_label
from workbench.app.models import Models, Settings
from workbench.app.session import Session, close_session
from workbench.data.coco import CocoDetection
from workbench.inputs import InputError
from workbench.model.build import build_detector, save_pretrained
from workbench.postprocess import MERGE_IOU, shown_detections
from workbench.predictor import Predictor
from workbench.types import Detections, Exemplar, VisualPrompt

SHAPES = EXAMPLES_DIR / "shapes"
IMAGE = SHAPES / "images" / "shapes_000002.png"  # 256 px; red solid stars, yellow solid circles
STAR = {"xmin": 133, "ymin": 155, "xmax": 190, "ymax": 205, "label": "red solid star"}
CIRCLE = {"xmin": 74, "ymin": 38, "xmax": 128, "ymax": 89, "label": "yellow solid circle"}
SETTINGS = Settings(max_detections=30)
# gradio's queue calls pandas options that pandas 3 deprecates; not this project's code.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")


def tiny(seed: int) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(build_detector("tiny").eval(), min_size=128, max_size=256)


@pytest.fixture(scope="module")
def models() -> Models:
    return Models.from_predictors(tiny(0), tiny(1))


def payload(path=IMAGE, *boxes) -> dict:
    """The image annotator's raw value, as the browser or gradio_client sends it."""
    return {"image": {"path": str(path), "orig_name": Path(path).name}, "boxes": list(boxes)}


def compare(models, target, reference=None, bank="", threshold=0.0, session=None):
    return handlers.compare(models, session, target, reference, bank, threshold, SETTINGS)


# --- reading what the page sends ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("RBC", ("RBC", False)),
        ("-RBC", ("RBC", True)),
        ("not  RBC", ("RBC", True)),
        ("Not rbc", ("rbc", True)),
        ("", ("object", False)),
        ("  WBC ", ("WBC", False)),
    ],
)
def test_box_labels_name_classes_and_negatives(label, expected):
    assert split_label(label) == expected


def test_boxes_of_both_images_group_into_classes_by_name():
    target = read_annotated(
        payload(IMAGE, STAR, {**CIRCLE, "label": "-Yellow Solid Circle"}), "target", 2048
    )
    ref_box = {**CIRCLE, "label": "yellow solid circle"}
    reference = read_annotated(
        payload(IMAGE, {**STAR, "label": "RED SOLID STAR"}, ref_box), "reference", 2048
    )
    prompts = prompts_from(target, reference)
    assert [(p.name, p.negative, len(p.exemplars)) for p in prompts] == [
        ("red solid star", False, 2),
        ("Yellow Solid Circle", True, 1),
        ("yellow solid circle", False, 1),
    ]
    assert [e.image_id for e in prompts[0].exemplars] == [None, "reference"]


def test_huge_image_is_downscaled_with_its_boxes_and_a_notice(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (4000, 1000), (200, 10, 10)).save(path)
    box = {"xmin": 2000, "ymin": 400, "xmax": 3000, "ymax": 800, "label": "a", "scaleFactor": 2}
    annotated = read_annotated(payload(path, box), "target", 1000)
    assert annotated.size_hw == (250, 1000)
    assert annotated.boxes[0].box_xyxy == (250.0, 50.0, 375.0, 100.0)  # /2 for display, /4
    assert "downscaled it to 1000x250" in annotated.notices[0]


def test_a_missing_image_file_is_named_with_the_fix(tmp_path):
    with pytest.raises(InputError, match=r"gone\.png was not found .*upload the image again"):
        read_annotated(payload(tmp_path / "gone.png"), "target", 2048)


def test_a_file_that_is_not_an_image_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not pixels")
    with pytest.raises(InputError, match=r"notes\.txt is not an image"):
        read_annotated(payload(path, STAR), "target", 2048)


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ((), "no prompts"),
        (({**STAR, "xmax": 133},), "zero area"),
        (({**STAR, "xmin": 300, "xmax": 400},), "entirely outside"),
        (({**STAR, "label": "-star"},), "every class is negative"),
        (tuple({**STAR, "label": f"c{i}"} for i in range(3)), "too many prompts: 3 classes"),
    ],
)
def test_bad_prompts_are_refused_with_a_message(models, boxes, message):
    settings = Settings(max_classes=2)
    with pytest.raises(InputError, match=message):
        handlers.compare(models, None, payload(IMAGE, *boxes), None, "", 0.3, settings)


def test_no_image_and_no_model_are_refused(models):
    with pytest.raises(InputError, match="no image"):
        compare(models, None)
    with pytest.raises(InputError, match="no model is loaded"):
        compare(Models.from_predictors(None, None), payload(IMAGE, STAR))


# --- compare ------------------------------------------------------------------------------------


def test_compare_runs_both_models_as_the_library_does(models):
    session, view, _ = compare(models, payload(IMAGE, STAR, CIRCLE))
    prompts = [
        VisualPrompt(
            b["label"], (Exemplar((b["xmin"], b["ymin"], b["xmax"], b["ymax"])),), prompt_id=i
        )
        for i, b in enumerate((STAR, CIRCLE))
    ]
    image = read_annotated(payload(), "target", 2048).image
    for key in ("sft", "grqo"):
        direct = models.get(key).predictor.predict(image, prompts, max_detections=30)
        got = session.comparison.detections[key]
        assert torch.equal(got.boxes_xyxy, direct.boxes_xyxy)
        assert torch.equal(got.scores, direct.scores)
        assert view.images[key].width >= 512  # enlarged from 256 px for legible captions
    assert view.headers == ["class", "SFT", "GRQO", "both", "only SFT", "only GRQO"]
    assert [row[0] for row in view.rows] == ["red solid star", "yellow solid circle"]
    # threshold 0: the whole top-K, duplicates merged; the summary gives the raw count
    shown = session.comparison.shown()
    assert sum(row[1] for row in view.rows) == len(shown["sft"]) <= 30
    assert f"**SFT**: {len(shown['sft'])} objects (30 raw boxes before merging)" in view.summary
    assert all(row[3] + row[4] == row[1] and row[3] + row[5] == row[2] for row in view.rows)


def test_rethreshold_filters_the_stored_comparison(models):
    session, _, _ = compare(models, payload(IMAGE, STAR))
    scores = session.comparison.detections["sft"].scores
    cut = float(scores.median())
    view = handlers.rethreshold(models, session, cut)
    raw = session.comparison.detections["sft"]
    assert view.rows[0][1] == len(shown_detections(raw, cut)) <= int((scores >= cut).sum())
    assert handlers.rethreshold(models, session, cut, merge=False).rows[0][1] == int(
        (scores >= cut).sum()
    )
    assert handlers.rethreshold(models, session, 1.0).rows[0][1:3] == [0, 0]
    assert handlers.rethreshold(models, None, 0.5) is None  # nothing to filter yet


def test_the_status_says_what_ran_what_each_model_found_and_what_to_try(models):
    session, view, _ = compare(models, payload(IMAGE, STAR, CIRCLE), threshold=0.0)
    assert view.status.startswith(
        "Searched **shapes_000002.png** for red solid star (1 box), yellow solid circle (1 box) "
        "with SFT and GRQO in "
    )
    for key, title in (("sft", "SFT"), ("grqo", "GRQO")):
        shown = session.comparison.shown()[key]
        found = Counter(shown.names)
        best = float(session.comparison.detections[key].scores.max())
        listed = ", ".join(f"{found[n]} {n}" for n in dict.fromkeys(shown.names))
        assert f"{title} found {listed} (best score {best:.2f})." in view.status
    # nothing above the threshold: the best score, the threshold that shows it, what to try
    quiet = handlers.rethreshold(models, session, 1.0).status
    best = float(session.comparison.detections["sft"].scores.max())
    lower = math.floor(best * 100) / 100
    assert f"SFT found nothing scoring >= 1.00 (best score {best:.2f}" in quiet
    assert f"lower the score threshold to {lower:.2f} to see it" in quiet
    assert "fine-tune a model on a few annotated images" in quiet
    assert handlers.rethreshold(models, session, lower).rows  # and there it is
    assert sum(r[1] for r in handlers.rethreshold(models, session, lower).rows) >= 1


def test_one_colour_per_class_name_on_prompt_boxes_results_and_the_table(models):
    examples = scan_examples(EXAMPLES_DIR)
    session, example = handlers.load_example(examples, "shapes/shapes_000002.png")
    colors = {b["label"]: tuple(b["color"]) for b in example.annotator["boxes"]}
    assert len(set(colors.values())) == len(colors) == 2  # distinct classes, distinct colours
    offered = handlers.label_colors(session, list(colors))
    assert offered == list(colors.values())  # the label list offers the same colours
    target = payload(
        example.annotator["image"],
        *({k: b[k] for k in b if k != "color"} for b in example.annotator["boxes"]),
    )
    session, view, _ = compare(models, target, session=session)
    assert view.colors == [colors[row[0]] for row in view.rows]
    plain = render.draw_labelled(Image.open(IMAGE), torch.zeros(0, 4), [], [])
    for key in ("sft", "grqo"):
        drawn = view.images[key].convert("RGB")
        for name in {n for n in session.comparison.shown()[key].names}:
            before = _pixels_of(plain, colors[name])
            assert _pixels_of(drawn, colors[name]) > before + 50, (key, name)
    assert session.color("-ignored", negative=True) == (128, 128, 128)


def test_small_images_are_enlarged_for_drawing_and_read_back_exactly(models):
    examples = scan_examples(EXAMPLES_DIR)
    session, example = handlers.load_example(examples, "shapes/shapes_000002.png")
    copy = example.annotator["image"]
    assert Image.open(copy).size == (512, 512)  # 256 px, shown twice as large
    suggested = examples["shapes/shapes_000002.png"].prompt_boxes
    drawn_boxes = on_file_boxes(example.annotator["boxes"])
    assert [b["xmin"] for b in drawn_boxes] == [2 * b["xmin"] for b in suggested]
    on_copy = read_annotated(payload(copy, *drawn_boxes), "target", 2048)
    on_file = read_annotated(payload(IMAGE, *on_file_boxes(suggested)), "target", 2048)
    assert torch.equal(on_copy.image, on_file.image)  # the original pixels, exactly
    assert on_copy.boxes == on_file.boxes and on_copy.file_name == "shapes_000002.png"
    assert not on_copy.notices
    a = compare(models, payload(copy, *drawn_boxes))[0].comparison.detections["sft"]
    b = compare(models, payload(IMAGE, *on_file_boxes(suggested)))[0]
    assert torch.equal(a.scores, b.comparison.detections["sft"].scores)
    # an upload: small images get an enlarged copy to draw on, larger ones stay as they are
    assert Image.open(handlers.for_drawing(session, payload(IMAGE))["image"]).size == (512, 512)
    bccd = EXAMPLES_DIR / "bccd" / "images" / "BloodImage_00021.jpg"
    assert handlers.for_drawing(session, payload(bccd)) is None
    assert handlers.load_example(examples, "bccd/BloodImage_00021.jpg")[1].annotator["image"] == (
        str(bccd)
    )


def on_file_boxes(boxes):
    return [{k: b[k] for k in (*BOX_KEYS, "label")} for b in boxes]


def _pixels_of(image, rgb) -> int:
    return int((torch.tensor(list(image.getdata())) == torch.tensor(rgb)).all(1).sum())


def test_negative_class_detections_are_hidden(models):
    session, view, _ = compare(models, payload(IMAGE, STAR, {**CIRCLE, "label": "-circle"}))
    assert session.comparison.names == ("red solid star", "circle")
    for dets in session.comparison.detections.values():
        assert set(dets.prompt_index.tolist()) <= {0}
    assert [row[0] for row in view.rows] == ["red solid star"]


def test_reference_image_prompts_search_the_target(models, tmp_path):
    target = EXAMPLES_DIR / "shapes" / "images" / "shapes_000000.png"
    session, _, _ = compare(models, payload(target), payload(IMAGE, STAR))
    prompt = VisualPrompt("red solid star", (Exemplar((133, 155, 190, 205), "ref"),))
    direct = models.sft.predictor.predict(
        read_annotated(payload(target), "t", 2048).image,
        [prompt],
        reference_images={"ref": read_annotated(payload(), "r", 2048).image},
        max_detections=30,
    )
    assert torch.equal(session.comparison.detections["sft"].scores, direct.scores)


def test_agreement_matches_same_class_boxes_one_to_one():
    def dets(boxes, classes, scores):
        n = len(boxes)
        return Detections(
            torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
            torch.tensor(scores),
            torch.tensor(classes),
            ("x",) * n,
            (100, 100),
        )

    box, moved = [10, 10, 50, 50], [40, 40, 80, 80]
    sft = dets([box, box, moved], [0, 0, 0], [0.9, 0.8, 0.7])
    grqo = dets([box, moved, [60, 60, 90, 90]], [0, 1, 0], [0.6, 0.5, 0.4])
    a, b = render.agreement(sft, grqo)
    # One GRQO box on `box`: only the best-scoring SFT box there agrees; `moved` differs in class.
    assert a == ["both", "only", "only"]
    assert b == ["both", "only", "only"]
    assert render.agreement_pairs(sft, grqo) == [(0, 0)]
    assert render.agreement_pairs(sft, grqo, iou=0.1) == [(0, 0), (2, 2)]  # IoU 400/2100


def test_a_missing_model_leaves_its_image_empty_with_the_reason(models):
    half = Models.from_predictors(models.sft.predictor, None)
    _, view, _ = compare(half, payload(IMAGE, STAR))
    assert view.images["grqo"] is None and view.images["sft"] is not None
    assert view.headers == ["class", "SFT"]
    assert "Not shown: GRQO: no GRQO model was given" in view.summary


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_with_ground_truth_shows_rewards_advantages_and_kl(models):
    truth = {"path": str(SHAPES / "annotations.json")}
    _, view, notices = handlers.inspect(
        models, None, "grqo", payload(IMAGE, STAR), None, "", truth, 5, SETTINGS, True
    )
    queries = models.grqo.predictor.model.config.num_queries
    assert len(view.rows) == queries and not notices
    column = {h: [row[i] for row in view.rows] for i, h in enumerate(view.headers)}
    assert {"reward", "advantage", "iou", "matched_gt", "kl", "hungarian"} <= set(column)
    assert sum(column["muted"]) == round(queries / 3)
    assert all(a == 0 for a, m in zip(column["advantage"], column["muted"], strict=True) if m)
    matched = [name for name in column["matched_gt"] if name]
    assert matched and all(name.endswith("red solid star") for name in matched)
    assert "ground truth: 7 boxes" in view.summary and "KL against SFT" in view.summary
    assert view.plot.width > 300 and view.top_queries.width >= 512
    # The same table as the library's, with the SFT model as the KL reference.
    image = read_annotated(payload(), "t", 2048).image
    gt_boxes = torch.tensor([b for b, name in zip(*_truth(), strict=True) if name == STAR["label"]])
    prompt = [VisualPrompt(STAR["label"], (Exemplar((133, 155, 190, 205)),))]
    library = query_table(
        models.grqo.predictor,
        image,
        prompt,
        reference=models.sft.predictor,
        ground_truth=GroundTruth(gt_boxes, torch.zeros(len(gt_boxes))),
    )
    for field in ("score", "reward", "advantage", "kl"):
        expected = [round(getattr(r, field), 4) for r in library]
        assert column[field] == pytest.approx(expected, abs=2e-4), field


def test_inspect_marks_queries_muted_as_the_models_own_run_did(tmp_path):
    """A checkpoint carries its run: loaded as the app loads it, a model trained with
    grqo.mute=0 shows no muted query, the same weights with the default mute the last third,
    and both read images at the size their run recorded."""
    from workbench.config import load_config, to_dict

    torch.manual_seed(0)
    model = build_detector("tiny").eval()
    sizes = ["model.size=tiny", "data.min_size=128", "data.max_size=256"]
    truth = {"path": str(SHAPES / "annotations.json")}
    muted = {}
    for name, overrides in (("default", []), ("no_mute", ["grqo.mute=0"])):
        run = to_dict(load_config(None, [*sizes, *overrides]))
        folder = save_pretrained(model, tmp_path / name, config=run)
        loaded = Models.from_checkpoints(None, folder, device="cpu")
        assert not loaded.sft.available and loaded.grqo.available
        grqo = loaded.grqo.predictor
        assert (grqo.min_size, grqo.max_size) == (128, 256)
        _, view, _ = handlers.inspect(
            loaded, None, "grqo", payload(IMAGE, STAR), None, "", truth, 3, SETTINGS
        )
        column = {h: [row[i] for row in view.rows] for i, h in enumerate(view.headers)}
        assert "advantage" in column and len(column["muted"]) == model.config.num_queries
        muted[name] = sum(column["muted"])
        assert f"{muted[name]} muted" in view.summary
    assert muted == {"default": round(model.config.num_queries / 3), "no_mute": 0}


def test_inspect_with_ground_truth_shows_each_models_query_metrics(models):
    truth = {"path": str(SHAPES / "annotations.json")}
    _, view, _ = handlers.inspect(
        models, None, "sft", payload(IMAGE, STAR), None, "", truth, 3, SETTINGS
    )
    line = view.summary.split("\n\n")[-1]
    assert line.startswith("**Query selection on this image**")
    # The library's metrics of each model's queries for the same image and prompt.
    image = read_annotated(payload(), "t", 2048).image
    prompt = [VisualPrompt(STAR["label"], (Exemplar((133, 155, 190, 205)),))]
    runs = []
    for slot in (models.sft, models.grqo):
        encoded = slot.predictor.encode(image)
        bank = slot.predictor.embed_prompts(prompt, searched=encoded)
        runs.append((slot.title, slot.predictor.predict(encoded, bank, return_queries=True)[1]))
    gt_boxes = torch.tensor([b for b, name in zip(*_truth(), strict=True) if name == STAR["label"]])
    gt = GroundTruth(gt_boxes, torch.zeros(len(gt_boxes), dtype=torch.int64))
    assert line == handlers.describe_query_metrics(runs, gt)
    assert "SFT: recall of the top ⅓ / ⅔ queries" in line and " · GRQO: recall" in line


def _truth():
    """Boxes (xyxy) and class names of IMAGE in the shapes json."""
    data = json.loads((SHAPES / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    anns = [a for a in data["annotations"] if a["image_id"] == 3]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    return boxes, [names[a["category_id"]] for a in anns]


def test_inspect_without_ground_truth_shows_scores_only(models):
    half = Models.from_predictors(models.sft.predictor, None)
    _, view, _ = handlers.inspect(
        half, None, "sft", payload(IMAGE, STAR), None, "", None, 3, SETTINGS
    )
    assert "reward" not in view.headers and "kl" not in view.headers
    assert view.headers == ["rank", "class", "score", "muted"]
    assert "no ground truth" in view.summary and "Query selection" not in view.summary
    with pytest.raises(InputError, match="GRQO model is not loaded"):
        handlers.inspect(half, None, "grqo", payload(IMAGE, STAR), None, "", None, 3, SETTINGS)


def test_ground_truth_of_another_image_or_no_matching_class(models):
    bccd = EXAMPLES_DIR / "bccd" / "images" / "BloodImage_00021.jpg"
    truth = {"path": str(SHAPES / "annotations.json")}
    with pytest.raises(InputError, match=r"none is named 'BloodImage_00021\.jpg'"):
        handlers.inspect(models, None, "sft", payload(bccd, STAR), None, "", truth, 3, SETTINGS)
    _, view, notices = handlers.inspect(
        models, None, "sft", payload(IMAGE, {**STAR, "label": "x"}), None, "", truth, 3, SETTINGS
    )
    assert "reward" not in view.headers and "no ground-truth class matches" in notices[0]


# --- prompt banks, export, sessions, models -----------------------------------------------------


def test_saved_bank_applied_to_another_image_equals_the_drawn_boxes(models):
    session, names, files, _ = handlers.save_bank(
        models, None, payload(IMAGE, STAR), None, "stars/../x", SETTINGS
    )
    assert names == ["stars..x"] and [Path(f).name for f in files] == [
        "stars..x.sft.safetensors",
        "stars..x.grqo.safetensors",
    ]
    assert all(Path(f).parent.parent == session.folder for f in files)
    other = EXAMPLES_DIR / "shapes" / "images" / "shapes_000000.png"
    with_bank, _, _ = compare(models, payload(other), None, "stars..x", session=session)
    cross, _, _ = compare(models, payload(other), payload(IMAGE, STAR))
    for key in ("sft", "grqo"):
        assert torch.allclose(
            with_bank.comparison.detections[key].scores, cross.comparison.detections[key].scores
        )
    with pytest.raises(InputError, match="no prompt bank named 'nope'"):
        compare(models, payload(other), None, "nope", session=session)
    folder = session.folder
    close_session(session)
    assert not folder.exists()


def test_export_writes_one_coco_json_per_model_at_the_threshold(models):
    session, _, _ = compare(models, payload(IMAGE, STAR, {**CIRCLE, "label": "-c"}))
    handlers.rethreshold(models, session, 0.05)
    paths, message = export.export_coco(session)
    names = ["shapes_000002_sft.json", "shapes_000002_grqo.json", "shapes_000002.png"]
    assert [Path(p).name for p in paths] == names
    for key, path in zip(("sft", "grqo"), paths[:2], strict=True):
        data = json.loads(Path(path).read_text())
        assert data["categories"] == [{"id": 1, "name": "red solid star"}]
        shown = shown_detections(session.comparison.detections[key], 0.05)
        assert len(data["annotations"]) == len(shown) > 0  # as shown: duplicates merged
        assert data["info"]["merge_iou"] == MERGE_IOU
        dataset = CocoDetection(path)  # json + image load as a dataset
        searched = read_annotated(payload(), "target", 2048).image
        assert torch.allclose(dataset.load_image(0), searched, atol=0.5 / 255)
        assert len(dataset.target(0)) == len(shown)
    assert "score >= 0.05 (duplicates merged above IoU 0.5)" in message


def test_send_to_fiftyone_hands_the_shown_detections_to_the_hook_in_memory(models):
    session, _, _ = compare(models, payload(IMAGE, STAR), threshold=0.05)
    unavailable = export.send_to_fiftyone(session, "FiftyOne export is unavailable.")
    assert unavailable.endswith("Download the COCO json instead.")
    sent = []
    assert export.send_to_fiftyone(session, lambda *args: sent.append(args) or "ok") == "ok"
    image, file_name, detections = sent[0]
    assert image.size == (256, 256) and file_name == IMAGE.name
    for key in ("sft", "grqo"):
        shown = shown_detections(session.comparison.detections[key], 0.05)
        assert detections[key].query_index.tolist() == shown.query_index.tolist()
        assert len(shown) > 0
    assert not any(session.folder.rglob("*.json"))  # nothing went through files
    with pytest.raises(InputError, match="run Detect first"):
        export.send_to_fiftyone(Session(), lambda *args: "never called")


def test_checkpoints_that_do_not_load_become_messages(tmp_path):
    good = save_pretrained(build_detector("tiny"), tmp_path / "good")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.json").write_text("{not json")
    models = Models.from_checkpoints(broken, good, min_size=128, max_size=256, device="cpu")
    assert models.grqo.available and not models.sft.available
    assert "did not load" in models.sft.error and "--sft CKPT --grqo CKPT" in models.sft.error
    missing = Models.from_checkpoints(
        tmp_path / "nope", None, default_folder=tmp_path / "models", device="cpu"
    )
    assert "does not exist" in missing.sft.error
    assert "no default GRQO model" in missing.grqo.error


def test_examples_carry_ground_truth_and_suggested_prompts():
    examples = scan_examples(EXAMPLES_DIR)
    assert len([k for k in examples if k.startswith("shapes/")]) == 4
    assert len([k for k in examples if k.startswith("bccd/")]) == 4
    bccd = examples["bccd/BloodImage_00021.jpg"]
    assert set(bccd.classes) == {"RBC", "WBC", "Platelets"}
    assert bccd.prompt_boxes[0]["label"] == "RBC"  # the most frequent class comes first
    size = sum(f.stat().st_size for f in EXAMPLES_DIR.rglob("*") if f.is_file())
    assert size < 1_000_000 and (EXAMPLES_DIR / "bccd" / "LICENSE").is_file()


def test_the_app_binds_localhost_by_default():
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and (args.min_size, args.max_size) == (None, None)


# --- the server, through gradio_client ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(models, free_port):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo = app.build_demo(models, settings=SETTINGS)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def client_target(*boxes):
    from gradio_client import handle_file

    return {
        "image": handle_file(str(IMAGE)),
        "boxes": [{**b, "color": "rgb(255, 0, 0)"} for b in boxes],
    }


ENDPOINTS = {
    "/load_example",
    "/compare",
    "/apply_threshold",
    "/inspect_queries",
    "/query_columns",
    "/save_bank",
    "/export_coco",
    "/send_to_fiftyone",
    "/search_images",
    "/adapt_add",
    "/adapt_start",
    "/adapt_cancel",
    "/adapt_use_sft",
    "/adapt_use_grqo",
    "/model_info",
}


def test_every_endpoint_through_gradio_client(server, models, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == (
        ENDPOINTS
    )
    info = client.predict(api_name="/model_info")
    assert info["models"]["sft"]["available"] and "bccd/BloodImage_00021.jpg" in info["examples"]
    example = client.predict("bccd/BloodImage_00021.jpg", api_name="/load_example")
    assert example[0]["boxes"][0]["label"] == "RBC" and example[2].endswith(".json")
    sft, grqo, counts, _, status = client.predict(
        client_target(STAR), None, "", 0.0, api_name="/compare"
    )
    assert Image.open(sft).width >= 512 and Image.open(grqo).width >= 512
    _, view, _ = compare(models, payload(IMAGE, STAR))  # the same models, in process
    assert counts["data"] == view.rows and status.startswith("Searched **shapes_000002.png**")
    counts_high = client.predict(1.0, api_name="/apply_threshold")[2]
    assert counts_high["data"][0][1:3] == [0, 0]
    table, plot, _, query_summary, _ = client.predict(
        "sft",
        client_target(STAR),
        None,
        "",
        handle_file(str(SHAPES / "annotations.json")),
        5,
        api_name="/inspect_queries",
    )
    assert "reward" in table["headers"] and "KL against GRQO" in query_summary
    assert Image.open(plot).width > 300
    choices, files, _ = client.predict(client_target(STAR), None, "stars", api_name="/save_bank")
    assert ["stars", "stars"] in choices["choices"] and len(files) == 2
    with_bank = client.predict(
        {"image": handle_file(str(IMAGE)), "boxes": []}, None, "stars", 0.0, api_name="/compare"
    )
    assert with_bank[2]["data"] == view.rows
    exported, _ = client.predict(api_name="/export_coco")
    assert len(exported) == 3 and json.loads(Path(exported[0]).read_text())["images"]
    sent = client.predict(api_name="/send_to_fiftyone")
    assert "Sent 2 model result(s)" in sent and "FiftyOne App](http://127.0.0.1:" in sent, sent
    check_the_fiftyone_dataset_holds(exported)
    # Bad input: a clear status line, no exception, and the server keeps answering.
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    bad = client.predict(
        {"image": handle_file(str(text)), "boxes": [STAR]}, None, "", 0.3, api_name="/compare"
    )
    assert bad[-1].startswith("**Problem:**") and "notes.txt is not an image" in bad[-1]
    none = client.predict(client_target(), None, "", 0.3, api_name="/compare")
    assert "no prompts" in none[-1]
    assert client.predict(api_name="/model_info")["models"]["grqo"]["available"]


def check_the_fiftyone_dataset_holds(exported: list[str]) -> None:
    """The app's FiftyOne dataset has the exported image, once, with each model's detections
    (as many as its COCO json, at the same boxes)."""
    import fiftyone as fo

    from workbench.integrations.fiftyone_app import APP_DATASET

    ds = fo.load_dataset(APP_DATASET)
    # stored in this session's FiftyOne media folder (tests/conftest.py), under the image's stem
    media = Path(os.environ["FIFTYONE_DEFAULT_DATASET_DIR"]).resolve() / APP_DATASET
    stem = Path(exported[2]).stem
    samples = [s for s in ds if Path(s.filepath).parent == media]
    assert [Path(s.filepath).name.split("-")[0] for s in samples] == [stem]
    assert len(samples) == 1, [s.filepath for s in ds]
    sent, shown = Image.open(samples[0].filepath), Image.open(exported[2])
    assert sent.tobytes() == shown.tobytes()  # the image the models saw, stored by FiftyOne
    width, height = Image.open(exported[2]).size
    for model, path in zip(("sft", "grqo"), exported[:2], strict=True):
        annotations = json.loads(Path(path).read_text())["annotations"]
        detections = samples[0][f"{model}_predictions"].detections
        assert len(detections) == len(annotations) > 0, model
        x, y, w, h = annotations[0]["bbox"]
        first = [x / width, y / height, w / width, h / height]
        assert any(d.bounding_box == pytest.approx(first, abs=1e-6) for d in detections), model


def test_eight_parallel_clients_get_their_own_answers(server, models, tmp_path):
    from gradio_client import Client, handle_file

    # Each user its own image (a crop of its own width), box and class name; the answer each
    # must get is what the library gives for that request alone.
    requests, expected = {}, {}
    for k in range(8):
        path = tmp_path / f"user{k}.png"
        Image.open(IMAGE).crop((0, 0, 256 - 12 * k, 256)).save(path)
        box = {**CIRCLE, "xmin": CIRCLE["xmin"] - 3 * k, "label": f"shape of user {k}"}
        requests[k] = (path, box)
        _, view, _ = compare(models, payload(path, box))
        expected[k] = (view.rows, Image.open(path).size)
    assert len({str(rows) for rows, _ in expected.values()}) > 1  # the answers differ

    results, errors = {}, []

    def user(k: int) -> None:
        try:
            client = Client(server, verbose=False)
            path, box = requests[k]
            target = {"image": handle_file(str(path)), "boxes": [{**box, "color": "red"}]}
            out = client.predict(target, None, "", 0.0, api_name="/compare")
            results[k] = (out[2]["data"], Image.open(out[0]).size, out[4])
        except Exception as err:  # collected, so the assertion names every failure
            errors.append(f"client {k}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=user, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8
    for k, (rows, (width, height), status) in results.items():
        own_rows, (own_width, own_height) = expected[k]
        assert status.startswith(f"Searched **user{k}.png**") and rows == own_rows, k
        assert width / height == pytest.approx(own_width / own_height, rel=0.02), k
