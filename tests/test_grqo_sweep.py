"""The GRQO sweep's bookkeeping: which runs exist, who holds them, which alpha wins, intervals,
and how the committed report stands in for run folders that are gone.

Training itself is the trainer's (tested elsewhere); here the sweep's folder and its report are
temporary ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def sweep(benchmark, tmp_path):
    return benchmark("grqo_sweep.py", root=tmp_path / "runs")


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
    assert not any(n.split("/")[1].startswith(sweep.STAGE_TWO) for n in names)  # no best yet


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
    # Stage two runs at the best alpha and at the released one, each in folders of its own.
    stage_two = {r.name: r for r in sweep.plan() if r.arm.startswith(sweep.STAGE_TWO)}
    assert len(stage_two) == 2 * 2 * len(sweep.SEEDS)
    beta0 = stage_two["shapes/beta0_a1/seed0"]
    assert "grqo.alpha=1.0" in beta0.overrides and "grqo.beta=0" in beta0.overrides
    shared = stage_two["shapes/shared_exemplar_a0.01/seed2"]
    assert "grqo.alpha=0.01" in shared.overrides
    assert "grqo.reference_exemplars=shared" in shared.overrides


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


def fake_trained(folder: Path, weights: str, origin: str | None = None) -> None:
    """A trained run folder as the sweep sees it: a summary and a checkpoint manifest whose
    weights hash is ``weights``."""
    from workbench.checkpoint import checkpoint_path

    step = checkpoint_path(folder, 150)
    step.mkdir(parents=True)
    files = {"model.safetensors": {"bytes": 1, "sha256": weights}}
    (step / "checkpoint.json").write_text(json.dumps({"files": files}))
    (folder / "summary.json").write_text("{}")
    if origin is not None:
        (folder / "sweep_origin.json").write_text(json.dumps({"origin": origin}))


SHARES = {"grad_norm_sft": 2.0, "grad_share_adv": 1e-3}


def ledger(sweep, rows: dict[str, float | None]) -> None:
    """A committed report holding ``rows`` (run name -> validation AP, None: not evaluated), as
    a sitting on another machine left it: no origins recorded; GRQO arms with gradient
    shares."""
    by_name = {r.name: r for r in sweep.plan()}
    runs = [
        {
            "run": name,
            "overrides": sweep._relative(by_name[name].overrides),
            "evaluated": ap is not None,
            "evaluation": evaluation(ap) if ap is not None else None,
            "gradient_shares": SHARES if sweep.wants_shares(by_name[name]) and ap else {},
        }
        for name, ap in rows.items()
    ]
    folder = Path(os.environ["WORKBENCH_BENCH_RESULTS"])
    folder.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu": "elsewhere", "cpu_flags": ["avx2"]}, "runs": runs}
    (folder / "grqo_sweep.json").write_text(json.dumps(report))


def test_recorded_runs_are_done_without_their_folders_and_a_lost_origin_trains_first(sweep):
    ledger(
        sweep,
        {
            "shapes/base/seed1": 0.2,
            "shapes/sft/seed1": 0.3,
            "bccd_ft/sft/seed1": 0.25,
            "bccd_ft/grqo_a0.01/seed1": 0.26,
            "bccd_ft/grqo_a10/seed1": None,  # planned, never evaluated
        },
    )
    runs = {r.name: r for r in sweep.plan()}
    assert sweep.done(runs["bccd_ft/grqo_a0.01/seed1"], runs)
    assert sweep.done(runs["shapes/sft/seed1"], runs)
    assert not sweep.done(runs["bccd_ft/grqo_a10/seed1"], runs)
    # Its origin's folder is gone: the origin's own origin trains first, then the origin.
    ready: list = []
    sweep.needs(runs["bccd_ft/grqo_a10/seed1"], runs, ready)
    assert [r.name for r in ready] == ["shapes/base/seed1"]
    fake_trained(runs["shapes/base/seed1"].folder, "b" * 64)
    ready = []
    sweep.needs(runs["bccd_ft/grqo_a10/seed1"], runs, ready)
    assert [r.name for r in ready] == ["shapes/sft/seed1"]
    # A record under other overrides (the plan changed since) does not count.
    path = Path(os.environ["WORKBENCH_BENCH_RESULTS"]) / "grqo_sweep.json"
    report = json.loads(path.read_text())
    report["runs"][3]["overrides"].append("train.epochs=99")
    path.write_text(json.dumps(report))
    assert not sweep.done(runs["bccd_ft/grqo_a0.01/seed1"], runs)


def test_arms_pair_with_sft_by_origin_and_a_new_origin_trains_sft_again(sweep):
    ledger(
        sweep, {"shapes/sft/seed1": 0.3, "bccd_ft/sft/seed1": 0.25, "bccd_ft/grqo_a1/seed1": 0.27}
    )
    runs = {r.name: r for r in sweep.plan()}
    sft, ours = runs["bccd_ft/sft/seed1"], runs["bccd_ft/grqo_a1/seed1"]
    found = sweep.pair("bccd_ft", "grqo_a1", 1, runs)
    assert found is not None and [e["origin"] for e in found] == [None, None]
    assert sweep.metric(found[0]["evaluation"], *sweep.SELECT) == 0.27
    # The origin trains again here and its weights differ from the lost ones: an arm of this
    # seed that trains from it (alpha = 10) has no SFT partner until SFT trains again too.
    fake_trained(runs["shapes/sft/seed1"].folder, "c" * 64)
    assert not sweep.done(sft, runs)
    assert sweep.done(ours, runs)  # its record pairs with the recorded SFT of its origin
    ten = runs["bccd_ft/grqo_a10/seed1"]
    fake_trained(ten.folder, "d" * 64, origin="c" * 64)
    (ten.folder / "sweep_eval.json").write_text(json.dumps(evaluation(0.22)))
    assert sweep.pair("bccd_ft", "grqo_a10", 1, runs) is None
    fake_trained(sft.folder, "e" * 64, origin="c" * 64)
    (sft.folder / "sweep_eval.json").write_text(json.dumps(evaluation(0.24)))
    new = sweep.pair("bccd_ft", "grqo_a10", 1, runs)
    assert [e["origin"] for e in new] == ["c" * 64] * 2
    assert sweep.metric(new[1]["evaluation"], *sweep.SELECT) == 0.24
    old = sweep.pair("bccd_ft", "grqo_a1", 1, runs)  # still paired with the recorded SFT
    assert sweep.metric(old[1]["evaluation"], *sweep.SELECT) == 0.25
    # The report keeps both SFT evaluations, each with the origin it started from.
    assert sorted(str(e["origin"]) for e in sweep.entries(sft)) == ["None", "c" * 64]


def test_train_makes_the_named_runs_after_the_runs_they_start_from(sweep):
    runs = {r.name: r for r in sweep.plan()}

    def order(*names: str) -> list[str]:
        return [r.name for r in sweep.to_train(list(names), runs)]

    bases = ["shapes/sft/seed1", "shapes/sft/seed2"]
    assert order(*bases) == ["shapes/base/seed1", *bases[:1], "shapes/base/seed2", *bases[1:]]
    fake_trained(runs["shapes/base/seed1"].folder, "b" * 64)
    assert order(bases[0]) == [bases[0]]  # its origin's weights are here
    fake_trained(runs[bases[0]].folder, "c" * 64, origin="b" * 64)
    assert order(*bases) == ["shapes/base/seed2", bases[1]]
    with pytest.raises(SystemExit, match="no such run: shapes/sft/seed7;"):
        order("shapes/sft/seed7")


def test_the_fine_tuning_ablations_run_before_the_shapes_arms(sweep, monkeypatch):
    globals_ = sweep.plan.__globals__
    monkeypatch.setitem(globals_, "best_alpha", lambda domain, runs=None: 0.01)
    names = [r.name for r in sweep.plan()]
    stage_two = [n for n in names if n.startswith(("bccd_ft/beta0_", "bccd_ft/shared_"))]
    shapes_arms = [n for n in names if n.startswith("shapes/") and "/sft/" not in n]
    assert len(stage_two) == 2 * len(sweep.SEEDS)  # the best alpha is the released one
    assert max(names.index(n) for n in stage_two) < min(
        names.index(n) for n in shapes_arms if "/base/" not in n
    )


def test_a_grqo_run_without_gradient_shares_is_not_done(sweep):
    ledger(
        sweep, {"shapes/sft/seed1": 0.3, "bccd_ft/sft/seed1": 0.25, "bccd_ft/grqo_a1/seed1": 0.27}
    )
    path = Path(os.environ["WORKBENCH_BENCH_RESULTS"]) / "grqo_sweep.json"
    report = json.loads(path.read_text())
    runs = {r.name: r for r in sweep.plan()}
    ours = runs["bccd_ft/grqo_a1/seed1"]
    assert sweep.done(ours, runs)
    report["runs"][2]["gradient_shares"] = {}  # recorded before shares reached the log
    path.write_text(json.dumps(report))
    assert not sweep.done(ours, runs)  # its folder is gone: it trains again
    assert sweep.done(runs["bccd_ft/sft/seed1"], runs)  # SFT has no GRQO terms to measure
    # Evaluated here without logged shares: not done until measured on its final weights.
    fake_trained(ours.folder, "d" * 64)
    (ours.folder / "sweep_eval.json").write_text(json.dumps(evaluation(0.22)))
    (ours.folder / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.0}) + "\n")
    assert not sweep.done(ours, runs) and sweep.gradient_shares(ours) == ({}, None)
    probed = {"shares": {"grad_share_adv": 0.5}, "measured": "after training"}
    (ours.folder / "sweep_shares.json").write_text(json.dumps(probed))
    assert sweep.done(ours, runs)
    assert sweep.gradient_shares(ours) == ({"grad_share_adv": 0.5}, "final weights")
    # What training logged comes first, averaged over the measurements.
    lines = [{"step": 24, "grad_share_adv": 0.1}, {"step": 49, "grad_share_adv": 0.3}]
    (ours.folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert sweep.gradient_shares(ours) == ({"grad_share_adv": pytest.approx(0.2)}, "logged")


def test_shares_of_a_run_that_logged_none_are_measured_on_its_final_checkpoint(sweep, tmp_path):
    """A real (tiny) GRQO run that measured no gradient shares while training gets them from
    its final weights and saved reference, without changing the run."""
    from testing_constants import QUICK_SHAPES, TINY

    from workbench.config import load_config
    from workbench.experiment import train

    overrides = [
        *QUICK_SHAPES,
        "train.objective=grqo",
        "train.eval_every_epochs=0",
        "train.max_steps=3",
        "train.batch_size=4",
        "grqo.alpha=1",
        "grqo.grad_norm_every=0",
    ]
    run = sweep.Run("bccd_ft/grqo_a1/seed0", overrides)
    train(load_config(TINY, [*overrides, f"train.out_dir={run.folder}"]))
    assert sweep.gradient_shares(run) == ({}, None)
    before = {p.name: p.stat().st_mtime_ns for p in run.folder.rglob("*") if p.is_file()}
    sweep.probe_shares(run)
    record = json.loads((run.folder / "sweep_shares.json").read_text())
    shares = record["shares"]
    assert "step 2" in record["measured"]
    assert shares["grad_norm_sft"] > 0 and shares["grad_norm_adv"] > 0
    assert 0 < shares["grad_share_adv"] < math.inf  # averaged per batch, like the log's
    assert -1 <= shares["grad_cos_adv_sft"] <= 1
    assert sweep.gradient_shares(run) == (shares, "final weights")
    after = {p.name: p.stat().st_mtime_ns for p in run.folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten


def test_an_arms_gradient_shares_are_averaged_over_the_seeds_that_have_them(sweep):
    found = [
        {
            "gradient_shares": {"grad_share_adv": 1e-3, "grad_share_kl": 0.2},
            "gradient_shares_from": "logged",
        },
        {"gradient_shares": {"grad_share_adv": 3e-3, "grad_share_kl": math.nan}},
        {"gradient_shares": {}},  # recorded before shares reached the log
    ]
    shares = sweep.mean_shares(found)
    assert shares["n"] == 2 and shares["from"] == ["None", "logged"]
    assert shares["grad_share_adv"] == pytest.approx(2e-3)
    assert shares["grad_share_kl"] == 0.2  # a NaN (nothing to divide by) is left out
    assert "grad_cos_adv_sft" not in shares


def full_evaluation(ap: float, recall: float) -> dict:
    """Every evaluation the report reads, with query metrics (the AP spread on test only)."""
    stats = {"stats": {"AP": ap}, "split_stats": {"base": {"AP": ap}, "novel": {"AP": ap}}}
    out = {}
    for split in ("val", "test"):
        metrics = {"recall_top_third": recall, "ece_objectness": 0.1}
        out[split] = {
            name: {**stats, "query_metrics": dict(metrics)}
            for name in ("interactive", "cross_image_k1", "cross_image_k8")
        }
    out["test"]["cross_image_k1"]["query_metrics"]["ap_std_draws"] = recall / 10
    return out


def test_the_report_gives_each_arm_paired_gains_in_ap_and_query_metrics_and_its_shares(sweep):
    by_name = {r.name: r for r in sweep.plan()}
    values = {  # run -> (AP, recall among the top third)
        "bccd_ft/sft/seed0": (0.30, 0.70),
        "bccd_ft/sft/seed1": (0.32, 0.72),
        "bccd_ft/grqo_a1/seed0": (0.31, 0.75),
        "bccd_ft/grqo_a1/seed1": (0.34, 0.73),
    }
    rows = [
        {
            "run": name,
            "overrides": sweep._relative(by_name[name].overrides),
            "evaluated": True,
            "evaluation": full_evaluation(*value),
            "gradient_shares": SHARES if "grqo" in name else {},
            "gradient_shares_from": "logged" if "grqo" in name else None,
        }
        for name, value in values.items()
    ]
    folder = Path(os.environ["WORKBENCH_BENCH_RESULTS"])
    folder.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu": "elsewhere"}, "runs": rows}
    (folder / "grqo_sweep.json").write_text(json.dumps(report))
    written = json.loads(sweep.report().read_text())
    arm = written["summary"]["bccd_ft"]["arms"]["grqo_a1"]
    assert arm["delta/test/interactive/AP"]["mean"] == pytest.approx(0.015)
    assert arm["delta/val/cross_image_k1/recall_top_third"]["values"] == pytest.approx([0.05, 0.01])
    assert arm["delta/test/cross_image_k1/ap_std_draws"]["mean"] == pytest.approx(0.003)
    assert "delta/val/cross_image_k1/ap_std_draws" not in arm  # one draw on validation
    assert "delta/test/interactive/spearman_select_reward" not in arm  # not measured
    assert arm["gradient_shares"]["n"] == 2 and arm["gradient_shares"]["from"] == ["logged"]
    assert arm["gradient_shares"]["grad_share_adv"] == pytest.approx(1e-3)
    assert written["summary"]["bccd_ft"]["arms"]["grqo_a10"]["pairs"] == []
    assert (folder / "grqo_sweep.png").is_file()
    # The report is also the ledger: every recorded row stays.
    assert {r["run"] for r in written["runs"] if r["evaluated"]} == set(values)
