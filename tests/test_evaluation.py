"""COCO AP under the visual-prompt protocols: arithmetic, evaluator parity, records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench.coco_eval import (
    STAT_NAMES,
    coco_results,
    coco_stats,
    ground_truth_coco,
    match_counts,
)
from workbench.data.prompts import cross_image_prompts, interactive_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.evaluation import PROTOCOLS, _predict_grouped, evaluate
from workbench.model.build import build_detector
from workbench.predictor import Predictor
from workbench.query_metrics import QUERY_METRICS
from workbench.types import Detections

SIZE = 128
CFG = ShapesConfig(image_size=SIZE, object_size=(16, 40))


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(8, seed=11, cfg=CFG)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(build_detector("tiny"), min_size=SIZE, max_size=SIZE)


class PerfectPredictor:
    """Answers every prompted class with its ground-truth boxes at score 1 (the exemplars'
    annotation ids tell which image is searched); ``drop`` returns nothing instead."""

    def __init__(self, dataset, drop: bool = False):
        self.dataset, self.drop = dataset, drop
        self.index_of = {i.annotation_id: i.image_index for i in dataset.instances()}

    def predict(
        self,
        image,
        prompts,
        *,
        reference_images=None,
        score_threshold=0.0,
        max_detections=None,
        return_queries=False,
    ):
        target = self.dataset.target(self.index_of[prompts[0].exemplars[0].annotation_id])
        column = {p.label: u for u, p in enumerate(prompts)}
        rows = [j for j, label in enumerate(target.labels.tolist()) if label in column]
        if self.drop:
            rows = []
        prompt_index = torch.tensor([column[int(target.labels[j])] for j in rows], dtype=torch.long)
        return Detections(
            boxes_xyxy=target.boxes_xyxy()[rows].reshape(-1, 4),
            scores=torch.ones(len(rows)),
            prompt_index=prompt_index,
            names=tuple(prompts[int(u)].name for u in prompt_index),
            image_size=target.orig_size,
        )


def test_perfect_detections_give_ap_one_with_base_and_novel_splits(shapes):
    result = evaluate(PerfectPredictor(shapes), shapes, protocol="interactive", evaluator="faster")
    assert result.num_images == len(shapes)
    assert math.isclose(result.AP, 1.0, abs_tol=1e-9) and math.isclose(result.AP50, 1.0)
    splits = {
        c.split
        for c in shapes.categories
        if any((shapes.target(i).labels == c.label).any() for i in range(len(shapes)))
    }
    assert splits == {"base", "novel"}  # the fixture shows both kinds
    for split in ("base", "novel"):
        assert math.isclose(result.split_stats[split]["AP"], 1.0, abs_tol=1e-9)
    present = [v for v in result.per_category.values() if not math.isnan(v)]
    assert present and np.allclose(present, 1.0)
    for record in result.records:
        assert record.tp50 == record.num_gt == record.num_detections and record.fp50 == 0
    assert sum(r.num_gt for r in result.records) == sum(len(shapes.target(i)) for i in range(8))
    json.dumps(result.to_dict(), allow_nan=False)


def test_no_detections_give_zero_not_a_crash(shapes):
    result = evaluate(PerfectPredictor(shapes, drop=True), shapes, max_images=3)
    assert result.AP == 0.0 and result.AR100 == 0.0
    assert all(r.num_detections == 0 and r.missed50 == r.num_gt for r in result.records)
    gt = ground_truth_coco(shapes, range(3))
    for evaluator in ("faster", "pycocotools"):
        assert coco_stats(gt, [], evaluator=evaluator).stats[0] == 0.0


def assert_evaluators_agree(gt, results):
    fast = coco_stats(gt, results, evaluator="faster")
    reference = coco_stats(gt, results, evaluator="pycocotools")
    assert len(fast.stats) == len(STAT_NAMES) == 12
    np.testing.assert_allclose(fast.stats, reference.stats, atol=1e-6, equal_nan=True)
    assert fast.per_category.keys() == reference.per_category.keys()
    per_fast, per_ref = list(fast.per_category.values()), list(reference.per_category.values())
    np.testing.assert_allclose(per_fast, per_ref, atol=1e-6, equal_nan=True)
    return fast


def test_evaluators_agree_on_real_tiny_model_predictions(predictor):
    # Large objects, so that even random weights place some boxes on them.
    cfg = ShapesConfig(
        image_size=SIZE, object_size=(48, 64), objects_per_image=(2, 4), categories_per_image=(1, 2)
    )
    data, indices = ShapesDataset(6, seed=11, cfg=cfg), range(6)
    prompts = [interactive_prompts(data.target(i), data.categories) for i in indices]
    dets = predictor.predict_batch([data.load_image(i) for i in indices], prompts)
    ids = [data.target(i).image_id for i in indices]
    category = {c.label: c.id for c in data.categories}
    category_ids = {
        image_id: [category[p.label] for p in plist]
        for image_id, plist in zip(ids, prompts, strict=True)
    }
    results = coco_results(dict(zip(ids, dets, strict=True)), category_ids)
    assert len(results) == sum(len(d) for d in dets) > 0
    gt = ground_truth_coco(data, indices)
    assert_evaluators_agree(gt, results)
    # Plus jittered ground truth at random scores: AP strictly between 0 and 1 for sure.
    rng = np.random.default_rng(0)
    jittered = [
        {
            **a,
            "bbox": (np.array(a["bbox"]) + rng.normal(0, 4, 4)).tolist(),
            "score": float(rng.random()),
        }
        for a in gt["annotations"]
    ]
    mixed = assert_evaluators_agree(gt, results + jittered)
    assert 0.0 < mixed.stats[0] < 1.0


def test_records_are_consistent_with_the_coco_totals(shapes, predictor):
    result = evaluate(predictor, shapes, protocol="interactive", max_images=4)
    gt = ground_truth_coco(shapes, range(4))
    assert sum(r.num_gt for r in result.records) == sum(not a["iscrowd"] for a in gt["annotations"])
    for r in result.records:
        assert r.tp50 + r.fp50 + r.ignored50 == r.num_detections
        assert 0 <= r.tp50 <= r.num_gt
        assert r.num_prompts == len(set(shapes.target(r.index).labels.tolist()))
    assert sum(r.num_detections for r in result.records) > 0
    assert 0.0 <= result.AP <= 1.0


def test_match_counts_of_a_constructed_case():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "iscrowd": 1},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.8},  # duplicate: FP
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.7},  # on crowd
        {"image_id": 1, "category_id": 1, "bbox": [200, 200, 5, 5], "score": 0.6},  # FP
    ]
    counts = match_counts(gt, results)[1]
    found = (counts.num_gt, counts.num_detections, counts.tp, counts.fp, counts.ignored)
    assert found == (1, 4, 1, 2, 1)


def test_ground_truth_is_in_original_pixels(shapes):
    gt = ground_truth_coco(shapes, [0])
    anns = sorted(gt["annotations"], key=lambda a: a["id"])
    insts = sorted(
        (i for i in shapes.instances() if i.image_index == 0), key=lambda i: i.annotation_id
    )
    assert [a["id"] for a in anns] == [i.annotation_id for i in insts]
    for ann, inst in zip(anns, insts, strict=True):
        x0, y0, x1, y1 = inst.box_xyxy
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=1e-3)
        assert ann["category_id"] == shapes.categories[inst.label].id
    assert gt["images"][0]["width"] == SIZE and {c.get("split") for c in gt["categories"]} == {
        "base",
        "novel",
    }


class PlainPredictor:
    """Only ``predict``: evaluation passes prompts and reference images instead of cached banks."""

    def __init__(self, predictor):
        self.inner = predictor

    def predict(self, image, prompts, **kwargs):
        return self.inner.predict(image, prompts, **kwargs)


def test_cross_image_cached_banks_equal_direct_prompting(shapes, predictor):
    cached = evaluate(predictor, shapes, protocol="cross_image", max_images=3, seed=1)
    direct = evaluate(
        PlainPredictor(predictor), shapes, protocol="cross_image", max_images=3, seed=1
    )
    assert [r.num_detections for r in cached.records] == [r.num_detections for r in direct.records]
    np.testing.assert_allclose(
        list(cached.stats.values()), list(direct.stats.values()), atol=1e-6, equal_nan=True
    )
    assert all(r.num_prompts > 0 for r in cached.records)
    # Categories seen only in the searched image, or nowhere, get no prompt for it.
    assert cached.unprompted and all(0 < n <= 3 for n in cached.unprompted.values())


def test_cross_image_with_a_separate_pool_and_a_model(shapes, predictor):
    pool = ShapesDataset(2, seed=99, cfg=CFG)
    model = predictor.model.train()
    try:
        result = evaluate(
            model,
            shapes,
            protocol="cross_image",
            prompt_pool=pool,
            max_images=2,
            min_size=SIZE,
            max_size=SIZE,
        )
        assert model.training  # evaluation restored the trainer's mode
    finally:
        model.eval()
    pooled = {inst.label for inst in pool.instances()}
    assert all(r.num_prompts == len(pooled) for r in result.records)
    never = {c.name for c in shapes.categories if c.label not in pooled}
    assert set(result.unprompted) == never
    assert all(n == 2 for n in result.unprompted.values())


def test_classes_beyond_the_prompt_limit_are_searched_in_groups(shapes, predictor):
    small = Predictor(
        predictor.model, min_size=SIZE, max_size=SIZE, max_prompts=1, max_detections=30
    )
    image, target = shapes.load_image(0), shapes.target(0)
    prompts = interactive_prompts(target, shapes.categories)
    assert len(prompts) >= 2
    merged = _predict_grouped(small, [image], [prompts], None, batch_size=4)[0]
    singles = [small.predict(image, [p]) for p in prompts]
    best = torch.cat([d.scores for d in singles]).sort(descending=True).values[:30]
    torch.testing.assert_close(merged.scores, best)
    assert merged.names == tuple(prompts[int(u)].name for u in merged.prompt_index)
    result = evaluate(small, shapes, protocol="interactive", max_images=2)
    assert all(r.num_detections == 30 for r in result.records)


# --- query metrics and exemplar draws -------------------------------------------------------


def answers(target, prompts, found: bool) -> Detections:
    """The ground-truth boxes of the prompted classes at score 1 (``found``), or nothing."""
    column = {p.label: u for u, p in enumerate(prompts)}
    rows = [j for j, label in enumerate(target.labels.tolist()) if found and label in column]
    prompt_index = torch.tensor([column[int(target.labels[j])] for j in rows], dtype=torch.long)
    return Detections(
        boxes_xyxy=target.boxes_xyxy()[rows].reshape(-1, 4),
        scores=torch.ones(len(rows)),
        prompt_index=prompt_index,
        names=tuple(prompts[int(u)].name for u in prompt_index),
        image_size=target.orig_size,
    )


def exemplar_ids(prompts) -> tuple:
    return tuple(ex.annotation_id for p in prompts for ex in p.exemplars)


class DrawStub:
    """Cross-image stub: perfect on an image when its exemplars are those of one of the ``good``
    draws (seed offsets), blind otherwise; it knows the searched image by its pixels."""

    def __init__(self, dataset, exemplars: dict, good: set[int]):
        self.dataset = dataset
        self.index_of = {dataset.load_image(i).numpy().tobytes(): i for i in range(len(dataset))}
        self.good = {ids for d in good for ids in exemplars[d]}

    def predict(self, image, prompts, *, reference_images=None):
        target = self.dataset.target(self.index_of[image.numpy().tobytes()])
        return answers(target, prompts, exemplar_ids(prompts) in self.good)


def test_ap_spread_over_exemplar_draws_of_a_stub_that_only_some_draws_help(shapes):
    instances, seed = shapes.instances(), 3
    exemplars = {
        d: {
            exemplar_ids(
                cross_image_prompts(
                    instances,
                    shapes.categories,
                    seed=seed + d,
                    exclude_image_ids=[shapes.target(i).image_id],
                )
            )
            for i in range(len(shapes))
        }
        for d in range(5)
    }
    good = {0, 2}
    assert not (exemplars[0] | exemplars[2]) & (exemplars[1] | exemplars[3] | exemplars[4])
    stub = DrawStub(shapes, exemplars, good)
    result = evaluate(stub, shapes, protocol="cross_image", seed=seed, exemplar_draws=5)
    assert 0 < result.AP < 1  # perfect on every prompted class; unprompted ones are missed
    assert result.ap_draws == [result.AP, 0.0, result.AP, 0.0, 0.0]
    spread = result.query_metrics["ap_std_draws"]
    assert spread == pytest.approx(result.AP * math.sqrt(0.3))  # std of [1, 0, 1, 0, 0]
    assert result.scalars()["ap_std_draws"] == spread
    assert result.to_dict()["ap_draws"] == result.ap_draws
    assert all(math.isnan(result.query_metrics[name]) for name in QUERY_METRICS)  # no queries
    single = evaluate(stub, shapes, protocol="cross_image", seed=seed)
    assert single.ap_draws == [] and "ap_std_draws" not in single.scalars()
    assert single.AP == result.AP


def test_query_metrics_of_the_tiny_model_exist_and_lie_in_range(predictor):
    # Large objects, so that even random weights find some (AP and recall above 0).
    cfg = ShapesConfig(
        image_size=SIZE, object_size=(48, 64), objects_per_image=(2, 4), categories_per_image=(1, 2)
    )
    shapes = ShapesDataset(6, seed=11, cfg=cfg)
    for protocol in PROTOCOLS:
        result = evaluate(predictor, shapes, protocol=protocol, exemplar_draws=5)
        scalars = result.scalars()
        assert all(math.isfinite(scalars[name]) for name in QUERY_METRICS), scalars
        assert 0 <= scalars["recall_top_third"] <= scalars["recall_top_two_thirds"] <= 1
        assert -1 <= scalars["spearman_select_reward"] <= 1
        assert 0 <= scalars["ece_objectness"] <= 1
        report = json.loads(json.dumps(result.to_dict(), allow_nan=False))
        assert set(QUERY_METRICS) <= set(report["query_metrics"])
        if protocol == "interactive":
            assert result.ap_draws == [] and "ap_std_draws" not in scalars
            continue
        assert len(report["ap_draws"]) == 5 and report["ap_draws"][0] == result.AP
        assert math.isfinite(scalars["ap_std_draws"]) and scalars["ap_std_draws"] >= 0
        # Every draw is the evaluation at its own seed, though images were encoded once.
        assert len(set(result.ap_draws)) > 1  # the draws differ
        for d in (1, 4):
            alone = evaluate(predictor, shapes, protocol=protocol, seed=d)
            assert result.ap_draws[d] == pytest.approx(alone.AP, rel=1e-6)
