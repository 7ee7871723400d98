"""The held-out test split: its own images, every category, and ``eval --split test``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.cli import main
from workbench.config import Config, DataConfig
from workbench.data.dataset import DatasetError
from workbench.data.sources import open_dataset
from workbench.evaluation import evaluate
from workbench.experiment import open_evaluation_data
from workbench.model.build import build_detector, save_pretrained
from workbench.types import Detections

SMALL = {"shapes_image_size": 64, "shapes_object_size": (8, 24), "min_size": 64, "max_size": 64}


def test_shapes_test_images_appear_in_no_other_split():
    cfg = DataConfig(shapes_train_images=24, shapes_val_images=12, **SMALL)
    splits = {s: open_dataset(cfg, s) for s in ("train", "val", "prompts", "test")}
    assert len(splits["test"]) == 12  # as many as validation by default
    assert len({d.seed for d in splits.values()}) == 4  # four generator streams
    pixels = {
        s: {d.load_image(i).numpy().tobytes() for i in range(len(d))} for s, d in splits.items()
    }
    assert len(pixels["test"]) == 12
    for other in ("train", "val", "prompts"):
        assert not pixels["test"] & pixels[other], other
    resized = DataConfig(shapes_test_images=5, **SMALL)
    assert len(open_dataset(resized, "test")) == 5 and len(open_dataset(resized, "val")) == 200


class Perfect:
    """Answers each interactive prompt with the searched image's boxes of that class."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.index_of = {i.annotation_id: i.image_index for i in dataset.instances()}

    def predict(self, image, prompts, *, reference_images=None):
        target = self.dataset.target(self.index_of[prompts[0].exemplars[0].annotation_id])
        column = {p.label: u for u, p in enumerate(prompts)}
        rows = [j for j, label in enumerate(target.labels.tolist()) if label in column]
        index = torch.tensor([column[int(target.labels[j])] for j in rows], dtype=torch.long)
        return Detections(
            boxes_xyxy=target.boxes_xyxy()[rows].reshape(-1, 4),
            scores=torch.ones(len(rows)),
            prompt_index=index,
            names=tuple(prompts[int(u)].name for u in index),
            image_size=target.orig_size,
        )


def test_the_shapes_test_split_shows_every_kind_and_reports_base_and_novel_apart():
    test = open_dataset(DataConfig(shapes_test_images=30, **SMALL), "test")
    shown = {test.categories[i.label].split for i in test.instances()}
    assert shown == {"base", "novel"}  # train renders base only; test, like val, all
    result = evaluate(Perfect(test), test, protocol="interactive")
    assert set(result.split_stats) == {"base", "novel"}
    assert all(math.isclose(s["AP"], 1.0) for s in result.split_stats.values())
    assert {"AP_base", "AP_novel"} <= set(result.scalars())


def test_a_mixture_has_a_test_split_and_coco_json_refuses_one(bccd_voc, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BCCD", str(bccd_voc))
    cfg = Config(data=DataConfig(name="shapes+bccd", shapes_test_images=2, **SMALL))
    evaluated, pool = open_evaluation_data(cfg, "test")
    assert len(evaluated) == 2 + 72  # BCCD's own test split
    assert len(pool) == 2000 + 205  # exemplars still come from eval.pool_split (train)
    with pytest.raises(DatasetError, match="no split 'test'"):
        open_evaluation_data(Config(data=DataConfig(name="coco_json", val_json="v.json")), "test")


def test_eval_command_evaluates_the_test_split(tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(build_detector("tiny"), tmp_path / "detector")
    overrides = [f"data.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in SMALL.items()]
    code = main(
        [
            "eval",
            str(tmp_path / "detector"),
            *overrides,
            "data.shapes_val_images=2",
            "data.shapes_test_images=3",
            "eval.pool_split=prompts",
            "eval.exemplar_draws=2",
            "--split",
            "test",
            "--out",
            str(tmp_path / "eval.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.index("split 'test': 3 of 3 images") > out.index(
        f"evaluating {tmp_path / 'detector'} on shapes split 'test': 3 images, protocols "
        "cross_image, interactive, at 64/64 px (config: the defaults (the checkpoint records "
        "no config), with data.shapes_image_size=64"
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report) == {"cross_image", "interactive"}
    for result in report.values():
        assert result["num_images"] == 3 and set(result["split_stats"]) == {"base", "novel"}
        assert "recall_top_third" in result["query_metrics"]
    assert len(report["cross_image"]["ap_draws"]) == 2
    assert "ap_std_draws" in report["cross_image"]["query_metrics"]
