"""``benchmarks/adapt.py``'s bookkeeping: the committed ``adapt.json`` is the grid's ledger, so a
report on a machine that ran some arms keeps the seeds other machines ran."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def bench(benchmark, tmp_path):
    return benchmark("adapt.py", root=tmp_path / "runs" / "bccd")


def arm_record(ap50: float) -> dict:
    """What ``workbench adapt`` writes to a finished run's adapt.json (the fields read here)."""
    scores = {p: {"AP": ap50 / 2, "AP50": ap50} for p in ("interactive", "cross_image")}
    base = {p: {"AP": 0.3} for p in ("interactive", "cross_image")}
    return {
        "plan": {"train_images": 205, "seconds_per_step": 3.0},
        "train": {"steps": 180, "stopped_by_time_limit": False, "seconds": 600.0},
        "before": {p: {"AP": 0.05, "AP50": 0.1} for p in scores},
        "after": scores,
        "forgetting": {"before": base, "after": base},
    }


def test_a_report_keeps_the_ledgers_seeds_and_adds_the_ones_finished_here(bench, capsys):
    other = {"cpu": "elsewhere", "cpu_flags": ["avx2"]}
    row = {"machine": other, **bench._row(arm_record(0.5))}
    ledger = {"arm_machine": other, "arms": {"all_m10_sft": {"per_seed": {"0": row}}}}
    results = bench.results_dir()
    (results / "adapt.json").write_text(json.dumps(ledger))
    assert bench.recorded()["all_m10_sft"] == {0: row}
    bench.status("bccd")
    assert "recorded bccd all_m10_sft seed0" in capsys.readouterr().out
    here = bench.folder("all_m10_sft", 1)
    here.mkdir(parents=True)
    (here / "adapt.json").write_text(json.dumps(arm_record(0.6)))
    arm = bench.finished_arms()["all_m10_sft"]
    assert sorted(arm["per_seed"]) == [0, 1]
    assert arm["per_seed"][0]["machine"] == other
    assert arm["per_seed"][1]["machine"]["cpu"] != "elsewhere"  # this machine
    assert arm["per_seed"][1]["commit"] is None  # finished before arms named their code
    ran = {"commit": "c0ffee", "machine": {"cpu": "the arm's CPU", "cpu_flags": []}, "base": "b5"}
    (here / bench.CODE_FILE).write_text(json.dumps(ran))
    arm = bench.finished_arms()["all_m10_sft"]
    assert arm["per_seed"][1]["commit"] == "c0ffee" and arm["per_seed"][1]["base"] == "b5"
    assert arm["per_seed"][1]["machine"] == ran["machine"]
    assert arm["summary"]["after/interactive/AP50"]["mean"] == pytest.approx(0.55)
    bench.report()
    written = json.loads((results / "adapt.json").read_text())["arms"]["all_m10_sft"]
    assert sorted(written["per_seed"]) == ["0", "1"]


def test_run_skips_what_the_ledger_holds_unless_told_to_redo_it(bench):
    ledger = {"arms": {"all_m10_sft": {"per_seed": {"0": bench._row(arm_record(0.5))}}}}
    (bench.results_dir() / "adapt.json").write_text(json.dumps(ledger))
    assert bench.pending(["all_m10_sft"], [0, 1]) == [("all_m10_sft", 1)]
    assert bench.pending(["all_m10_sft"], [0, 1], redo=True) == [
        ("all_m10_sft", 0),
        ("all_m10_sft", 1),
    ]
    here = bench.folder("all_m10_sft", 1)
    here.mkdir(parents=True)
    (here / "adapt.json").write_text(json.dumps(arm_record(0.6)))
    assert bench.pending(["all_m10_sft"], [0, 1], redo=True) == [("all_m10_sft", 0)]
    unfinished = bench.folder("all_m10_grqo", 0)  # killed before "after": it runs again
    unfinished.mkdir(parents=True)
    (unfinished / "adapt.json").write_text(json.dumps({"plan": {}}))
    assert bench.pending(None, [0])[:2] == [("all_m10_grqo", 0), ("50_m10_sft", 0)]
    # A misspelt arm is named, with the ones there are, instead of running nothing.
    with pytest.raises(SystemExit, match=r"--only kall_m10_sft: no such bccd arm; .*all_m10_sft"):
        bench.run(["kall_m10_sft", "all_m10_sft"], [0])


def test_run_trains_the_missing_bases_with_the_sweeps_recipe(
    bench, benchmark, tmp_path, monkeypatch
):
    from workbench.checkpoint import checkpoint_path

    bases = tmp_path / "bases"
    monkeypatch.setitem(bench.missing_bases.__globals__, "BASES", bases)
    step = checkpoint_path(bases / "seed0", 300)  # a trained base: its latest checkpoint
    step.mkdir(parents=True)
    manifest = {"files": {"model.safetensors": {"bytes": 1, "sha256": "5eed0"}}}
    (step / "checkpoint.json").write_text(json.dumps(manifest))
    (bases / "seed0" / "summary.json").write_text("{}")
    killed = checkpoint_path(bases / "seed1", 100)  # stopped mid-training: still to train
    killed.mkdir(parents=True)
    todo = [("all_m10_sft", 0), ("all_m10_grqo", 2), ("10_m5_sft", 1), ("10_m5_grqo", 2)]
    assert bench.missing_bases(todo) == [1, 2]
    assert bench.missing_bases(todo, "trees") == []  # models/sft ships with the repository
    command = bench.DOMAINS["bccd"].train_bases([1, 2])
    names = command[command.index("train") + 1 :]
    assert names == ["shapes/sft/seed1", "shapes/sft/seed2"]
    # The sweep knows them as runs (the bases follow its recipe) and trains their origins first.
    sweep = benchmark("grqo_sweep.py", root=tmp_path / "sweep")
    planned = sweep.to_train(names, {r.name: r for r in sweep.plan()})
    assert [r.name for r in planned][1::2] == names
    assert bench.DOMAINS["trees"].train_bases is None
    # Each arm names the weights it started from, a run's latest checkpoint or a shipped model.
    assert bench.weights_id(bases / "seed0") == "5eed0"
    shipped = json.loads((bench.DEFAULT_SFT / "checkpoint.json").read_text())
    assert bench.weights_id(bench.DEFAULT_SFT) == shipped["files"]["model.safetensors"]["sha256"]


def test_grqo_is_compared_with_sft_at_the_same_k_and_budget_paired_by_seed(bench, capsys):
    for arm, seeds_ap50 in {
        "all_m10_sft": {0: 0.5, 1: 0.6, 2: 0.7},
        "all_m10_grqo": {0: 0.52, 1: 0.64, 2: 0.7},
        "10_m10_sft": {0: 0.4, 1: 0.4},
        "10_m10_grqo": {1: 0.45},  # seed 0 missing: only seed 1 pairs
        "50_m10_sft": {0: 0.3},  # no GRQO arm: no comparison
    }.items():
        for seed, ap50 in seeds_ap50.items():
            (out := bench.folder(arm, seed)).mkdir(parents=True)
            (out / "adapt.json").write_text(json.dumps(arm_record(ap50)))
    cells = bench.grqo_minus_sft(bench.finished_arms())
    assert sorted(cells) == ["10_m10", "all_m10"]
    full = cells["all_m10"]
    assert full["seeds"] == [0, 1, 2]
    assert full["after/interactive/AP50"]["values"] == pytest.approx([0.02, 0.04, 0.0])
    assert full["after/interactive/AP50"]["mean"] == pytest.approx(0.02)
    assert full["after/interactive/AP"]["mean"] == pytest.approx(0.01)  # arm_record: AP = AP50/2
    assert full["after/interactive/AP50"]["low"] < 0 < full["after/interactive/AP50"]["high"]
    assert full["base_domain_after/interactive/AP"]["mean"] == pytest.approx(0.0)
    one = cells["10_m10"]
    assert one["seeds"] == [1] and one["after/cross_image/AP50"]["n"] == 1
    rows = bench.paired_table(cells, bench.finished_arms()).splitlines()
    assert rows[2].startswith("| all (205) | 10 | 3 | +0.020 [−0.030, +0.070] |")
    assert rows[3].startswith("| 10 | 10 | 1 | +0.050 |")  # one seed: no interval
    excluding_zero = {"mean": -0.027, "low": -0.033, "high": -0.021, "n": 3}
    assert bench._interval(excluding_zero) == "**−0.027 [−0.033, −0.021]**"
    bench.report()
    written = json.loads((bench.results_dir() / "adapt.json").read_text())
    assert written["grqo_minus_sft"]["all_m10"]["seeds"] == [0, 1, 2]
    assert "| all (205) | 10 | 3 | +0.020" in capsys.readouterr().out


def test_frozen_blocks_pairs_the_frozen_runs_with_the_whole_backbone_by_seed(benchmark, tmp_path):
    bench = benchmark("frozen_blocks.py", root=tmp_path / "runs" / "frozen")
    for blocks, seeds in {
        0: {1: (0.60, 0.9), 2: (0.70, 1.0)},
        4: {1: (0.62, 0.7), 2: (0.69, 0.8)},
    }.items():
        for seed, (ap50, seconds) in seeds.items():
            (out := bench.folder(150, blocks, seed)).mkdir(parents=True)
            (out / "adapt.json").write_text(json.dumps(arm_record(ap50)))
            log = [{"step": k, "step_time": seconds + 0.1 * (k == 0)} for k in range(3)]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (bench.folder(150, 0, 3)).mkdir(parents=True)  # started, not finished: no pair
    command = bench.command(150, 4, 1)
    assert command[command.index("--frozen-blocks") + 1] == "4"
    assert command[command.index("--steps") + 1] == "150"
    assert command[command.index("--from") + 1].endswith("shapes/sft/seed1")
    written = json.loads(bench.report(4, 150).read_text())
    assert written["seeds"] == [1, 2]
    diff = written["frozen_minus_whole"]
    assert diff["after/interactive/AP50"]["values"] == pytest.approx([0.02, -0.01])
    assert diff["seconds_per_train_step"]["mean"] == pytest.approx(
        -0.2
    )  # medians 0.9, 1.0 -> 0.7, 0.8
    assert written["runs"]["f4"]["2"]["after/interactive/AP50"] == pytest.approx(0.69)
