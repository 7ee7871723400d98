"""The GRQO sweep's bookkeeping: which runs exist, who holds them, which alpha wins, intervals.

Training itself is the trainer's (tested elsewhere); here the sweep's folder is a temporary one.
"""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = runpy.run_path(str(BENCHMARKS / "grqo_sweep.py"), run_name="grqo_sweep")
    namespace = type("Sweep", (), {})()
    namespace.__dict__.update(module)
    for fn in ("plan", "best_alpha", "_evaluation", "claim", "release"):
        module[fn].__globals__["ROOT"] = tmp_path
    namespace.root = tmp_path
    return namespace


def evaluation(ap: float) -> dict:
    record = {"stats": {"AP": ap}, "split_stats": {}, "query_metrics": {}}
    return {split: {"cross_image_k1": record} for split in ("val", "test")}


def test_the_plan_has_every_arm_for_every_seed_and_starts_them_from_the_right_run(sweep):
    runs = sweep.plan()
    names = [r.name for r in runs]
    arms = 1 + len(sweep.ALPHAS) + len(sweep.PG_ALPHAS)  # SFT, GRQO alphas, policy gradient
    assert len(names) == len(set(names)) == len(sweep.SEEDS) * (1 + 2 * arms)
    assert names[: len(sweep.SEEDS)] == [f"shapes/base/seed{s}" for s in sweep.SEEDS]
    stage_one = [n for n in names if n.split("/")[1] not in ("base", "sft")]
    fine_tune = [n for n in stage_one if n.startswith("bccd_ft/")]
    assert stage_one[: len(fine_tune)] == fine_tune  # the fine-tuning arms come first
    by_name = {r.name: r for r in runs}
    assert by_name["shapes/grqo_a100/seed1"].after == ["shapes/base/seed1"]
    assert by_name["bccd_ft/grqo_a0.01/seed2"].after == ["shapes/sft/seed2"]
    overrides = by_name["bccd_ft/pg_a1/seed0"].overrides
    assert "grqo.advantage_mode=policy_gradient" in overrides and "grqo.alpha=1.0" in overrides
    assert any(o.startswith("model.init_from=") for o in overrides)
    assert not any(n.split("/")[1].startswith("best") for n in names)  # no best alpha yet


def test_the_best_alpha_is_the_largest_mean_paired_gain_on_validation(sweep):
    def write(name, ap):
        folder = sweep.root / name
        folder.mkdir(parents=True)
        (folder / "sweep_eval.json").write_text(json.dumps(evaluation(ap)))

    for s in sweep.SEEDS:
        write(f"shapes/sft/seed{s}", 0.30 + 0.01 * s)
        for alpha in sweep.ALPHAS:
            gain = {1.0: 0.02, 10.0: 0.03 if s else -0.05}.get(alpha, -0.01)
            if alpha == sweep.ALPHAS[-1] and s == 2:
                continue  # one run missing: no verdict yet
            write(f"shapes/grqo_a{alpha:g}/seed{s}", 0.30 + 0.01 * s + gain)
    assert sweep.best_alpha("shapes") is None
    write(f"shapes/grqo_a{sweep.ALPHAS[-1]:g}/seed2", 0.32 - 0.01)
    assert sweep.best_alpha("shapes") == 1.0  # 10 wins two seeds of three, but loses on average
    stage_two = [r.name for r in sweep.plan() if "/best_" in r.name]
    assert len(stage_two) == 2 * len(sweep.SEEDS)
    beta0 = next(r for r in sweep.plan() if r.name == "shapes/best_beta0/seed0")
    assert "grqo.alpha=1.0" in beta0.overrides and "grqo.beta=0" in beta0.overrides


def test_a_run_is_held_by_one_live_process_and_a_dead_holder_is_replaced(sweep):
    run = sweep.plan()[0]
    assert sweep.claim(run)
    assert not sweep.claim(run)  # this process holds it
    sweep.release(run)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (run.folder / "sweep.lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename})
    )
    assert sweep.claim(run)  # the process that held it is gone


def test_paired_interval_covers_the_mean_and_needs_two_seeds(sweep):
    one = sweep.paired([0.02])
    assert one["mean"] == 0.02 and math.isnan(one["low"])
    three = sweep.paired([0.01, 0.02, 0.03])
    assert three["low"] < 0.02 < three["high"]
    assert three["high"] - three["low"] == pytest.approx(2 * 4.302653 * 0.01 / math.sqrt(3))
