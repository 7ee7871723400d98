"""The benchmark scripts run end to end at their smallest settings and write complete results.

Speed itself is not asserted (STYLE.md): only that each script runs, writes where
``WORKBENCH_BENCH_RESULTS`` says, and records finite numbers with its machine and versions.
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.types import Target

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RECORD_KEYS = {"benchmark", "command", "date", "commit", "machine", "versions"}

pytestmark = pytest.mark.slow


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results go to a temporary folder; torch's thread count is restored afterwards."""
    monkeypatch.setenv("WORKBENCH_BENCH_RESULTS", str(tmp_path))
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def run_script(name: str, *args: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), *args])
    runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")


def read(folder: Path, name: str) -> dict:
    record = json.loads((folder / f"{name}.json").read_text())
    assert set(record) >= RECORD_KEYS, RECORD_KEYS - set(record)
    assert record["benchmark"] == name and record["versions"]["torch"]
    return record


def finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_step_time_and_the_bf16_reference(results, monkeypatch):
    run_script(
        "step_time", "--sizes", "tiny", "--steps", "1", "--threads", "1", monkeypatch=monkeypatch
    )
    tiny = read(results, "step_time")["sizes"]["tiny"]
    assert finite(
        tiny["sft_step_s"], tiny["grqo_step_s"], tiny["grqo_reference_forward_s_per_step"]
    )
    assert tiny["grqo_over_sft"] == pytest.approx(tiny["grqo_step_s"] / tiny["sft_step_s"])
    for name in ("sft_bf16", "grqo_bf16"):  # the same steps under bf16 autocast
        assert finite(tiny[f"{name}_step_s"]) and tiny[f"{name}_step_s"] > 0
        fp32 = tiny[f"{name.split('_')[0]}_step_s"]
        assert tiny[f"{name}_over_fp32"] == pytest.approx(tiny[f"{name}_step_s"] / fp32)
    for name in ("sft", "grqo"):  # one step's loss at the same weights: bf16 only rounds
        assert 0 < tiny[f"{name}_bf16_loss_abs_change"] < 1
    ref = tiny["reference_bf16"]
    assert isinstance(ref["cpu_bf16_units"], bool)
    assert finite(ref["fp32_s"], ref["bf16_s"]) and ref["fp32_s"] > 0 and ref["bf16_s"] > 0
    # bf16 rounds: the reference's objectness moves, but stays a probability difference
    assert 0 < ref["objectness_abs_change_max"] < 1
    assert 0 < ref["objectness_abs_change_mean"] <= ref["objectness_abs_change_max"]


def test_step_time_with_frozen_backbone_blocks(results, monkeypatch):
    run_script(
        "step_time",
        *("--sizes", "small", "--steps", "1", "--threads", "1", "--no-reference-bf16"),
        *("--frozen-blocks", "4", "--image-size", "64", "--batch-size", "2"),
        monkeypatch=monkeypatch,
    )
    small = read(results, "step_time")["sizes"]["small"]
    assert (small["image_size"], small["batch_size"], small["frozen_backbone_blocks"]) == (64, 2, 4)
    assert finite(small["sft_frozen_step_s"], small["grqo_frozen_step_s"])
    assert small["sft_frozen_over_sft"] == pytest.approx(
        small["sft_frozen_step_s"] / small["sft_step_s"]
    )
    assert small["grqo_frozen_over_sft_frozen"] == pytest.approx(
        small["grqo_frozen_step_s"] / small["sft_frozen_step_s"]
    )


def test_predictor_latency(results, monkeypatch):
    run_script(
        "predictor_latency",
        "--sizes",
        "tiny",
        "--repeats",
        "1",
        "--image-size",
        "64",
        "--threads",
        "1",
        monkeypatch=monkeypatch,
    )
    tiny = read(results, "predictor_latency")["sizes"]["tiny"]
    variants = {
        "predict_image",
        "predict_encoded",
        "predict_bank",
        "predict_image_bf16",
        "predict_encoded_bf16",
        "encode",
        "model",
        "model_stacked",
        "hf",
    }
    assert set(tiny["ms"]) == variants
    assert all(finite(v["median_ms"], v["min_ms"]) and v["min_ms"] > 0 for v in tiny["ms"].values())
    assert finite(tiny["ratio_predictor_over_hf"], tiny["reprompt_speedup"], tiny["bank_speedup"])
    assert tiny["image_tokens"] >= tiny["queries"] == 50
    assert tiny["bf16_over_fp32"] == pytest.approx(
        tiny["ms"]["predict_image_bf16"]["median_ms"] / tiny["ms"]["predict_image"]["median_ms"]
    )
    assert 0 <= tiny["bf16_top_score_abs_change"] < 1  # scores stay probabilities


def test_coco_eval_speed_evaluators_agree(results, monkeypatch):
    run_script(
        "coco_eval_speed",
        "--images",
        "10",
        "--gt-per-image",
        "5",
        "--repeats",
        "1",
        monkeypatch=monkeypatch,
    )
    record = read(results, "coco_eval_speed")
    assert record["agree"] and record["max_abs_difference_stats"] <= 1e-6
    assert finite(record["speedup_faster_over_pycocotools"], *record["seconds"]["faster"]["all"])
    assert len(record["stats"]["faster"]) == 12 and finite(record["stats"]["pycocotools"]["AP"])


def test_scale_one_point(results, monkeypatch):
    run_script(
        "scale",
        "--size",
        "tiny",
        "--image-size",
        "64",
        "--sweeps",
        "batch",
        "--batch-sizes",
        "2",
        "--repeats",
        "1",
        "--peak-size",
        "256",
        "--threads",
        "1",
        monkeypatch=monkeypatch,
    )
    record = read(results, "scale")
    (point,) = record["sweeps"]["batch"]["points"]
    assert point["batch_size"] == 2 and point["effective_queries"] == 50
    assert finite(
        point["step_s"],
        point["flops"],
        point["achieved_gflops"],
        point["fraction_of_peak"],
        record["matmul_peak"]["gflops"],
    )
    assert point["flops"] > 0 and point["peak_rss_mb"] > 0
    assert point["step_peak_mb"] is None or point["step_peak_mb"] >= 0
    assert (results / "scale_batch.png").stat().st_size > 0


def test_scale_prompts_add_absent_classes():
    prompt_set = runpy.run_path(str(BENCHMARKS / "scale.py"))["prompt_set"]
    targets = [
        Target(
            torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3]]),
            torch.tensor([2, 5]),
            1,
            (64, 64),
            (64, 64),
        )
    ]
    rng = np.random.default_rng(0)
    many, one = prompt_set(targets, 6, rng), prompt_set(targets, 1, rng)
    assert many.labels[:2].tolist() == [2, 5]  # the classes present come first
    assert len(set(many.labels.tolist())) == 6 and min(many.labels[2:].tolist()) > 5
    assert one.num_prompts == 1 and one.labels.item() in (2, 5)


def test_quick_subset_lists_every_benchmark(capsys, monkeypatch):
    run_script("run_quick", "--dry-run", monkeypatch=monkeypatch)
    commands = [line.split()[2] for line in capsys.readouterr().out.splitlines()]
    names = {Path(c).stem for c in commands}
    assert names == {
        "step_time",
        "predictor_latency",
        "coco_eval_speed",
        "scale",
        "deformable_attention",
    }
    assert all(Path(c).is_file() for c in commands)


def _learning():
    sys.path.insert(0, str(BENCHMARKS))
    import learning

    return learning


def test_learning_presets_name_valid_variants_and_configs():
    from workbench.config import load_config

    learning = _learning()
    repo = BENCHMARKS.parent
    for preset in learning.PRESETS.values():
        for dataset, (overrides, variants) in preset["runs"].items():
            assert dataset in learning.HEADLINE and {"sft", "grqo"} <= set(variants)
            for variant in variants:
                config, extra = learning.VARIANTS[variant]
                cfg = load_config(repo / config, [*overrides, *extra])  # raises on a bad key
                assert cfg.train.objective == variant.split("_")[0]


def test_learning_reports_grqo_minus_sft_per_seed_with_its_spread():
    learning = _learning()
    key = learning.HEADLINE["shapes"]
    runs = [
        {"dataset": "shapes", "variant": v, "seed": s, "final": {key: ap}}
        for v, aps in (("sft", [0.1, 0.2, 0.3]), ("grqo", [0.2, 0.2, 0.5]))
        for s, ap in enumerate(aps)
    ]
    summary = learning.aggregate(runs)["shapes"]
    assert summary["sft"]["mean"] == pytest.approx(0.2)
    assert summary["grqo_minus_sft"]["per_seed"] == pytest.approx([0.1, 0.0, 0.2])
    assert summary["grqo_minus_sft"]["mean"] == pytest.approx(0.1)
    assert summary["grqo_minus_sft"]["std"] == pytest.approx(0.1)


def _adapt_record(ap50: float, steps: int) -> dict:
    scores = {p: {"AP": ap50 / 2, "AP50": ap50} for p in ("interactive", "cross_image")}
    zero = {p: {"AP": 0.0, "AP50": 0.0} for p in ("interactive", "cross_image")}
    return {
        "plan": {"train_images": 205, "seconds_per_step": 3.0},
        "train": {"steps": steps, "stopped_by_time_limit": True, "seconds": 540.0},
        "before": zero,
        "after": scores,
        "forgetting": {"before": scores, "after": zero},
    }


def test_adapt_report_averages_seeds_and_skips_unfinished_arms(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    import adapt

    monkeypatch.setattr(adapt, "ROOT", tmp_path / "runs")
    monkeypatch.setenv("WORKBENCH_BENCH_RESULTS", str(tmp_path / "results"))
    for seed, ap50 in ((0, 0.5), (1, 0.7)):
        out = adapt.folder("all_m10_sft", seed)
        out.mkdir(parents=True)
        (out / "adapt.json").write_text(json.dumps(_adapt_record(ap50, 170 + seed)))
    unfinished = adapt.folder("10_m5_grqo", 0)
    unfinished.mkdir(parents=True)
    (unfinished / "adapt.json").write_text(json.dumps({"plan": {}}))  # killed before "after"
    path = adapt.report()
    data = json.loads(path.read_text())
    assert list(data["arms"]) == ["all_m10_sft"]
    summary = data["arms"]["all_m10_sft"]["summary"]
    assert summary["after/interactive/AP50"]["mean"] == pytest.approx(0.6)
    assert summary["after/interactive/AP50"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert summary["base_domain_before/interactive/AP"]["mean"] == pytest.approx(0.3)
    assert (tmp_path / "results" / "adapt.png").stat().st_size > 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| all (205) | 10 | SFT | 2 | 170 | 0.000 ± 0.000 → **0.600 ± 0.141** |")


def test_adapt_report_adds_trees_beside_bccd_and_keeps_bccd_keys(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    import adapt

    monkeypatch.setattr(adapt, "ROOT", tmp_path / "runs" / "bccd")
    monkeypatch.setenv("WORKBENCH_BENCH_RESULTS", str(tmp_path / "results"))
    assert "50_m10_sft" not in adapt.arm_names("trees")
    for domain, ap50 in (("bccd", 0.5), ("trees", 0.3)):
        out = adapt.folder("10_m5_grqo", 0, domain)
        assert out.parts[-3] == domain
        out.mkdir(parents=True)
        (out / "adapt.json").write_text(json.dumps(_adapt_record(ap50, 40)))
    data = json.loads(adapt.report().read_text())
    assert list(data["arms"]) == ["10_m5_grqo"]
    assert data["arms"]["10_m5_grqo"]["summary"]["after/interactive/AP50"]["mean"] == 0.5
    trees = data["domains"]["trees"]["arms"]["10_m5_grqo"]["summary"]
    assert trees["after/interactive/AP50"]["mean"] == pytest.approx(0.3)
    assert (tmp_path / "results" / "adapt_trees.png").stat().st_size > 0
    assert "| trees AP50 interactive" in capsys.readouterr().out
    # A later report without the BCCD run folders keeps what the last one said of them.
    monkeypatch.setattr(adapt, "ROOT", tmp_path / "runs" / "bccd_moved")  # trees stay
    assert json.loads(adapt.report().read_text())["arms"] == data["arms"]
