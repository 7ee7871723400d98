"""The Predictor: box frames, post-processing, prompt banks, input checks, modes (tiny model)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.inputs import InputError
from workbench.model.build import build_detector, save_pretrained
from workbench.postprocess import detections_from_outputs
from workbench.predictor import Predictor
from workbench.prompt_bank import PromptBank
from workbench.types import Exemplar, VisualPrompt

SIZE = 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector("tiny").eval()


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, min_size=SIZE, max_size=2 * SIZE)


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(3, seed=5, cfg=ShapesConfig(image_size=SIZE, object_size=(16, 40)))


def prompt(name, box, image_id=None, negative=False, prompt_id=0):
    return VisualPrompt(
        name,
        (Exemplar(tuple(float(v) for v in box), image_id),),
        prompt_id=prompt_id,
        negative=negative,
    )


def gt_box(shapes, index, k=0):
    return shapes.target(index).boxes_xyxy()[k].tolist()


def assert_same(a, b):
    assert torch.equal(a.boxes_xyxy, b.boxes_xyxy)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.prompt_index, b.prompt_index)
    assert torch.equal(a.query_index, b.query_index)


# --- boxes --------------------------------------------------------------------------------------


def test_conversion_of_a_constructed_output_to_original_pixels():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0], [-5.0, -5.0]])
    boxes = torch.tensor([[0.5, 0.25, 0.2, 0.1], [0.95, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    dets = detections_from_outputs(
        logits, boxes, (300, 500), ["a", "b"], [False, False], max_detections=3
    )
    # Best pair: query 1 / prompt 1, cx 0.95 w 0.2 of a 500-wide image runs past the right
    # border (425..525) and is clipped to 500; then query 0 / prompt 0.
    assert dets.query_index.tolist() == [1, 0, 1]
    assert dets.prompt_index.tolist() == [1, 0, 0]
    assert dets.names == ("b", "a", "a")
    torch.testing.assert_close(dets.boxes_xyxy[0], torch.tensor([425.0, 120.0, 500.0, 180.0]))
    torch.testing.assert_close(dets.boxes_xyxy[1], torch.tensor([200.0, 60.0, 300.0, 90.0]))
    torch.testing.assert_close(dets.scores[0], torch.sigmoid(torch.tensor(3.0)))
    assert dets.image_size == (300, 500)


def test_same_pixels_at_two_original_sizes_give_boxes_scaled_by_two(model, shapes):
    predictor = Predictor(model, min_size=2 * SIZE, max_size=4 * SIZE)
    small = shapes.load_image(0)
    # Exactly what the Predictor does to `small`: the model sees identical pixels for both.
    large = F.interpolate(
        small[None], size=(2 * SIZE, 2 * SIZE), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0, 1)
    box = torch.tensor(gt_box(shapes, 0))
    d_small = predictor.predict(small, [prompt("x", box)])
    d_large = predictor.predict(large, [prompt("x", box * 2)])
    assert len(d_small) == len(d_large) > 0
    assert torch.equal(d_small.query_index, d_large.query_index)
    torch.testing.assert_close(d_large.boxes_xyxy, 2 * d_small.boxes_xyxy, atol=1e-3, rtol=1e-5)
    assert d_large.image_size == (2 * SIZE, 2 * SIZE)


def test_boxes_are_inside_the_original_image_and_ordered(predictor, shapes):
    image = shapes.load_image(1)[:, :100, :]  # non-square, resized to 128 x 164 inside
    dets = predictor.predict(image, [prompt("x", (10, 10, 40, 50))])
    b = dets.boxes_xyxy
    assert len(dets) > 0 and dets.image_size == (100, SIZE)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= SIZE).all() and (b[:, 3] <= 100).all()
    assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    assert (dets.scores[:-1] >= dets.scores[1:]).all()  # best first


# --- post-processing ----------------------------------------------------------------------------


def test_encode_then_predict_equals_direct_predict(predictor, shapes):
    image, prompts = shapes.load_image(0), [prompt("x", gt_box(shapes, 0))]
    encoded = predictor.encode(image)
    assert encoded.image_size == (SIZE, SIZE)
    assert_same(predictor.predict(image, prompts), predictor.predict(encoded, prompts))


def test_threshold_gives_a_subset_and_max_detections_is_respected(predictor, shapes):
    encoded, prompts = predictor.encode(shapes.load_image(0)), [prompt("x", gt_box(shapes, 0))]
    full = predictor.predict(encoded, prompts)
    threshold = float(full.scores.median())
    high = predictor.predict(encoded, prompts, score_threshold=threshold)
    pairs = lambda d: set(zip(d.query_index.tolist(), d.prompt_index.tolist(), strict=True))  # noqa: E731
    assert 0 < len(high) < len(full) and pairs(high) <= pairs(full)
    assert (high.scores >= threshold).all()
    top5 = predictor.predict(encoded, prompts, max_detections=5)
    assert len(top5) == 5 and torch.equal(top5.scores, full.scores[:5])


def test_top_k_runs_over_query_prompt_pairs(predictor, shapes):
    prompts = [prompt("a", gt_box(shapes, 0, 0)), prompt("b", gt_box(shapes, 0, 1), prompt_id=1)]
    dets = predictor.predict(shapes.load_image(0), prompts, max_detections=1000)
    q = predictor.model.config.num_queries
    assert len(dets) == 2 * q  # every (query, prompt) pair once: no NMS, no one-label-per-query
    assert set(dets.prompt_index.tolist()) == {0, 1}


def test_negative_prompts_compete_but_are_not_reported(predictor, shapes):
    encoded = predictor.encode(shapes.load_image(0))
    positive = prompt("want", gt_box(shapes, 0, 0))
    negative = prompt("not this", gt_box(shapes, 0, 1), negative=True, prompt_id=1)
    alone = predictor.predict(encoded, [positive])
    dets, queries = predictor.predict(encoded, [positive, negative], return_queries=True)
    assert queries.logits.shape[1] == 2 and queries.negative == (False, True)  # U includes it
    assert len(dets) > 0 and (dets.prompt_index == 0).all() and "not this" not in dets.names
    # A query whose best prompt is the negative one is claimed by it.
    claimed = queries.best_prompt == 1
    assert not claimed[dets.query_index].any()
    assert not torch.equal(alone.scores[: len(dets)], dets.scores)  # it changed the forward


def test_return_queries_describes_every_query(predictor, shapes):
    image = shapes.load_image(0)
    dets, q = predictor.predict(image, [prompt("x", gt_box(shapes, 0))], return_queries=True)
    n = predictor.model.config.num_queries
    assert q.token_index.shape == (n,) and q.select_logits.shape == (n,)
    assert q.boxes_xyxy.shape == (n, 4) and q.max_scores.shape == (n,)
    assert (q.select_logits[:-1] >= q.select_logits[1:]).all()
    torch.testing.assert_close(q.boxes_xyxy[dets.query_index], dets.boxes_xyxy)
    torch.testing.assert_close(q.scores[dets.query_index, dets.prompt_index], dets.scores)


# --- prompt banks and cross-image prompts -------------------------------------------------------


def test_cross_image_prompts_and_a_saved_bank_give_identical_detections(
    predictor, shapes, tmp_path
):
    searched, reference = shapes.load_image(0), shapes.load_image(1)
    prompts = [
        prompt("x", gt_box(shapes, 1, 0), image_id="ref"),
        prompt("y", gt_box(shapes, 1, 1), image_id="ref", prompt_id=1),
    ]
    direct = predictor.predict(searched, prompts, reference_images={"ref": reference})
    bank = predictor.embed_prompts(prompts, {"ref": predictor.encode(reference)}, name="mine")
    path = bank.save(tmp_path / "mine")
    loaded = PromptBank.load(path)
    assert path.suffix == ".safetensors" and loaded.name == "mine" and loaded.names == ("x", "y")
    assert torch.equal(loaded.embeddings, bank.embeddings)
    assert_same(direct, predictor.predict(searched, bank))
    assert_same(direct, predictor.predict(predictor.encode(searched), loaded))


def test_bank_averages_exemplars_of_a_class(predictor, shapes):
    image = shapes.load_image(0)
    boxes = [gt_box(shapes, 0, 0), gt_box(shapes, 0, 1)]
    two = VisualPrompt("x", tuple(Exemplar(tuple(b)) for b in boxes))
    bank = predictor.embed_prompts([two], searched=image)
    each = predictor.embed_exemplars(image, boxes)
    assert bank.num_exemplars == (2,)
    torch.testing.assert_close(bank.embeddings[0], each.mean(0))


def test_loading_a_pickle_as_a_bank_is_refused(tmp_path):
    torch_file, pickle_file = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    torch.save({"embeddings": torch.zeros(1, 4)}, torch_file)
    pickle_file.write_bytes(pickle.dumps({"embeddings": np.zeros((1, 4))}))
    for path in (torch_file, pickle_file):
        with pytest.raises(ValueError, match="pickle"):
            PromptBank.load(path)


def test_bank_from_other_weights_warns(predictor, shapes):
    bank = predictor.embed_prompts([prompt("x", gt_box(shapes, 0))], searched=shapes.load_image(0))
    foreign = dataclasses.replace(bank, model_fingerprint="0" * 16)
    with pytest.warns(UserWarning, match="other weights"):
        predictor.predict(shapes.load_image(1), foreign)


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((10, 10, 10, 40), "zero area"),
        ((40, 10, 10, 40), "negative size"),
        ((10, float("nan"), 30, 40), "NaN"),
        ((200, 200, 260, 260), "entirely outside"),
        ((-20, 10, 0.5, 40), "thinner than"),
    ],
)
def test_bad_prompt_boxes_are_refused_by_name(predictor, shapes, box, message):
    with pytest.raises(InputError, match=message) as err:
        predictor.predict(shapes.load_image(0), [prompt("cell", box)])
    assert "'cell', exemplar 0" in str(err.value)


def test_partly_outside_box_is_clipped(predictor, shapes):
    image = shapes.load_image(0)
    outside = predictor.predict(image, [prompt("x", (-30, 100, 50, 170))])
    assert_same(outside, predictor.predict(image, [prompt("x", (0, 100, 50, SIZE))]))


def test_missing_reference_image_no_prompt_and_too_many_prompts(model, predictor, shapes):
    image = shapes.load_image(0)
    with pytest.raises(InputError, match=r"reference image 'ref'.*reference_images"):
        predictor.predict(image, [prompt("x", (1, 1, 20, 20), image_id="ref")])
    with pytest.raises(InputError, match="no prompts"):
        predictor.predict(image, [])
    with pytest.raises(InputError, match="no searched image"):
        predictor.embed_prompts([prompt("x", (1, 1, 20, 20))])
    small = Predictor(model, min_size=SIZE, max_size=SIZE, max_prompts=2, max_exemplars=3)
    many = [prompt(f"p{i}", (1, 1, 20, 20), prompt_id=i) for i in range(3)]
    with pytest.raises(InputError, match="too many prompts: 3 classes, the limit is 2"):
        small.predict(image, many)
    boxes = VisualPrompt("p", tuple(Exemplar((1, 1, 20, 20 + i)) for i in range(4)))
    with pytest.raises(InputError, match="too many exemplar boxes: 4"):
        small.predict(image, [boxes])


def test_image_kinds_are_converted_or_refused(predictor, shapes):
    rgb = (shapes.load_image(0).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    prompts = [prompt("x", (10, 10, 40, 40))]
    from_array = predictor.predict(rgb, prompts)
    assert_same(from_array, predictor.predict(Image.fromarray(rgb), prompts))
    gray = Image.fromarray(rgb).convert("L")
    gray_rgb = np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    assert_same(predictor.predict(gray, prompts), predictor.predict(gray_rgb, prompts))
    opaque = Image.fromarray(rgb).convert("RGBA")
    assert_same(predictor.predict(opaque, prompts), from_array)
    for bad, message in [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (torch.rand(3, 20, 20) * 255, r"outside \[0, 1\]"),
        (torch.rand(5, 20, 20), "5 channels"),
        ("image.png", "type str"),
    ]:
        with pytest.raises(InputError, match=message):
            predictor.predict(bad, prompts)


# --- modes, devices, checkpoints ----------------------------------------------------------------


def test_train_mode_is_restored_and_results_match_eval_mode(model, shapes):
    image, prompts = shapes.load_image(0), [prompt("x", gt_box(shapes, 0))]
    reference = Predictor(model, min_size=SIZE, max_size=SIZE).predict(image, prompts)
    model.train()
    model.model.backbone.eval()  # a frozen part kept in eval by its trainer stays so
    try:
        dets = Predictor.from_model(model, min_size=SIZE, max_size=SIZE).predict(image, prompts)
        assert model.training and model.model.decoder.training
        assert not model.model.backbone.training
    finally:
        model.eval()
    assert_same(dets, reference)


def test_bf16_autocast_on_cpu(model, shapes):
    predictor = Predictor(model, min_size=SIZE, max_size=SIZE, autocast="bf16")
    dets = predictor.predict(shapes.load_image(0), [prompt("x", gt_box(shapes, 0))])
    assert len(dets) > 0 and dets.scores.dtype == torch.float32
    assert torch.isfinite(dets.boxes_xyxy).all() and (dets.boxes_xyxy <= SIZE).all()
    with pytest.raises(ValueError, match="CUDA"):
        Predictor(model, autocast="fp16", device="cpu")


def test_predict_batch_matches_single_predictions(predictor, shapes):
    images = [shapes.load_image(i) for i in range(3)]
    bank = predictor.embed_prompts([prompt("x", gt_box(shapes, 0))], searched=images[0])
    batched = predictor.predict_batch(images, bank, max_detections=10, batch_size=2)
    for image, dets in zip(images, batched, strict=True):
        single = predictor.predict(image, bank, max_detections=10)
        torch.testing.assert_close(dets.scores, single.scores, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dets.boxes_xyxy, single.boxes_xyxy, atol=1e-2, rtol=1e-4)
    per_image = [[prompt("x", gt_box(shapes, i))] for i in range(3)]  # each on its own image
    for i, dets in enumerate(predictor.predict_batch(images, per_image)):
        assert_close_dets(dets, predictor.predict(images[i], per_image[i]))


def test_predict_batch_returns_the_queries_predict_returns(predictor, shapes):
    images = [shapes.load_image(i) for i in range(2)]
    bank = predictor.embed_prompts([prompt("x", gt_box(shapes, 0))], searched=images[0])
    pairs = predictor.predict_batch(images, bank, max_detections=10, return_queries=True)
    for image, (dets, queries) in zip(images, pairs, strict=True):
        single, expected = predictor.predict(image, bank, max_detections=10, return_queries=True)
        assert_close_dets(dets, single)
        assert torch.equal(queries.token_index, expected.token_index)
        torch.testing.assert_close(queries.select_logits, expected.select_logits)
        torch.testing.assert_close(queries.boxes_xyxy, expected.boxes_xyxy, atol=1e-2, rtol=1e-4)
        torch.testing.assert_close(queries.boxes_xyxy[dets.query_index], dets.boxes_xyxy)


def assert_close_dets(a, b):
    torch.testing.assert_close(a.scores[:10], b.scores[:10], atol=1e-4, rtol=1e-4)


def test_from_checkpoint_and_auto_device(model, shapes, tmp_path):
    save_pretrained(model, tmp_path / "detector")
    loaded = Predictor.from_checkpoint(tmp_path / "detector", min_size=SIZE, max_size=SIZE)
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    image, prompts = shapes.load_image(0), [prompt("x", gt_box(shapes, 0))]
    expected = Predictor(model, min_size=SIZE, max_size=SIZE).predict(image, prompts)
    assert_same(loaded.predict(image, prompts), expected)
