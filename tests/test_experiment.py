"""Training runs end to end: the tiny detector learns, resumes exactly, and scales to torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from testing_constants import QUICK_SHAPES, TINY

from workbench.config import load_config
from workbench.data.synthetic import render_shapes_image
from workbench.experiment import open_splits, run_evaluation, train
from workbench.model.build import from_pretrained
from workbench.query_metrics import QUERY_METRICS

QUICK = [*QUICK_SHAPES, "eval.max_images=4"]


def run_cli(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def params(folder):
    return from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_tiny_model_overfits_eight_images(tmp_path):
    cfg = load_config(
        TINY,
        [
            "data.shapes_train_images=8",
            "data.val_split=train",
            "data.hflip_prob=0",
            "eval.protocols=[interactive]",
            "train.epochs=1000",
            "train.max_steps=400",
            "train.eval_every_epochs=0",
            "train.checkpoint_every=1000",
            f"train.out_dir={tmp_path}",
        ],
    )
    train(cfg)
    _, val, pool = open_splits(cfg)
    assert len(val) == 8
    result = run_evaluation(from_pretrained(tmp_path), cfg, val, pool)["interactive"]
    assert result.AP50 >= 0.9, result.scalars()


def test_train_eval_predict_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    run_cli("train", TINY, *QUICK, "train.max_steps=3", f"train.out_dir={run}")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [0, 1, 2]
    assert all(x["loss"] > 0 and "loss_class_enc" in x for x in steps)
    run_cli("eval", run, "eval.max_images=2", "--out", tmp_path / "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report) == {"cross_image", "interactive"} and "AP" in report["interactive"]["stats"]
    image = tmp_path / "img.png"
    pixels, anns = render_shapes_image(None, 0, 0)
    Image.fromarray(pixels).save(image)
    x, y, w, h = anns[0]["bbox"]
    box = f"{x},{y},{x + w},{y + h}:thing"
    sizes = ["--min-size", 96, "--max-size", 96, "--threshold", 0]
    run_cli("predict", run, image, "--box", box, *sizes, "--out", tmp_path / "pred")
    records = json.loads((tmp_path / "pred.json").read_text())
    assert records and all(r["name"] == "thing" for r in records)
    assert (tmp_path / "pred.png").is_file()


def test_each_epoch_logs_the_query_metrics_of_every_protocol(tmp_path):
    cfg = load_config(
        TINY,
        [
            *QUICK,
            "data.shapes_train_images=4",
            "train.epochs=1",
            "eval.exemplar_draws=2",
            f"train.out_dir={tmp_path}",
        ],
    )
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval/interactive/AP" in x]
    assert len(evals) == 1
    for protocol in ("cross_image", "interactive"):
        assert {f"eval/{protocol}/{name}" for name in QUERY_METRICS} <= set(evals[0])
    assert "eval/cross_image/ap_std_draws" in evals[0]
    assert "eval/interactive/ap_std_draws" not in evals[0]


@pytest.mark.parametrize("config", [TINY, "configs/tiny_shapes_grqo.yaml"])
def test_an_interrupted_run_resumes_to_the_same_parameters(tmp_path, config):
    # GRQO without warm-up: its reference model (refreshed each epoch) must come back exactly
    common = [
        *QUICK,
        "train.epochs=2",
        "train.checkpoint_every=2",
        "train.eval_every_epochs=0",
        "grqo.warmup_epochs=0",
    ]
    straight = tmp_path / "straight"
    train(load_config(config, [*common, f"train.out_dir={straight}"]))
    broken = tmp_path / "broken"
    # stop after 3 steps (mid-epoch: an epoch has 4), then resume to the end
    train(load_config(config, [*common, "train.max_steps=3", f"train.out_dir={broken}"]))
    train(load_config(config, [*common, f"train.out_dir={broken}"]), resume=True)
    a, b = params(straight), params(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process_with_the_same_global_batch(tmp_path):
    common = [
        *QUICK,
        "train.max_steps=3",
        "train.eval_every_epochs=0",
        "train.checkpoint_every=100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default, for identical summation
    single = tmp_path / "single"
    run_cli(
        "train",
        TINY,
        *common,
        "train.batch_size=4",
        "train.grad_accum=2",
        f"train.out_dir={single}",
        env=env,
    )
    multi = tmp_path / "multi"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "workbench",
            "train",
            TINY,
            *common,
            "train.batch_size=2",
            "train.grad_accum=1",
            f"train.out_dir={multi}",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = []
    for run in (single, multi):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses.append([x["loss"] for x in lines if "loss" in x])
    assert losses[0] == losses[1]
    a, b = params(single), params(multi)
    for key in a:
        assert torch.equal(a[key], b[key]), key
