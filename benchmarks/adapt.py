"""How much does ``adapt`` teach a detector in minutes on a CPU? A resumable grid per domain.

    python benchmarks/adapt.py run [--domain bccd|trees] [--only K_MINUTES_OBJECTIVE ...]
                                   [--seeds 0 1 2]
    python benchmarks/adapt.py status [--domain bccd|trees]
    python benchmarks/adapt.py report   # results/adapt.json + adapt.png (+ adapt_trees.png)

``--domain bccd`` (the default): the base has never seen the domain, the shapes-only SFT model
of ``benchmarks/grqo_sweep.py`` (``runs/grqo_sweep/shapes/sft/seed<k>``, one per seed; ``run``
trains a missing one first with ``grqo_sweep.py train``, the sweep's recipe) adapted to BCCD
blood cells with ``python -m workbench adapt bccd --from BASE --forgetting``: k in {10, 50, all}
training images, budgets of 5, 10 and 20 minutes, SFT and GRQO, seeds 0-2. Each arm is scored
on BCCD's held-out val split before and after (interactive and cross-image prompts), and on 100
shapes validation images after (forgetting).

Arms run one at a time: the budget is wall-clock minutes on the whole machine, so nothing else
may run beside them (``run`` refuses while a GRQO sweep worker runs; pause the sweep with
``pkill -STOP -f grqo_sweep.py`` and resume it with ``-CONT``). An arm's folder is
``runs/adapt_bench/bccd/k<K>_m<M>_<objective>/seed<S>``; a finished arm (its ``adapt.json`` has
``after`` and ``forgetting``) is skipped, an unfinished one is moved aside and run again, since a
resumed budget would not be the budget. Arms go in priority order: k = all at 10 minutes first.
The committed ``adapt.json`` is the grid's ledger: a seed of an arm it holds is done on any
machine, and ``report`` adds the seeds finished here to the ones it holds (a seed finished here
replaces its record; ``run --redo`` runs the seeds the ledger holds again, here). Each row names
the CPU and the commit its arm ran on (``bench_code.json``, written beside the arm's
``adapt.json``): both set how many steps a budget of minutes buys; and the sha256 of the base's
weights it started from (``base``), since a base trained again on a new machine differs from the
lost one (null for arms that ran before they named it). ``report`` also sets GRQO
against SFT at each k and budget, paired by seed (``grqo_minus_sft``: the mean difference in AP50,
AP and the base domain's AP, with a 95 % t-interval once two seeds pair).

``--domain trees``: the app's default SFT model (``models/sft``, trained on synthetic shapes and
BCCD; the same base for every seed) adapted to the deepforest aerial tree tiles with
``python -m workbench adapt trees --from models/sft --forgetting``: k in {all, 10} training tiles,
the same budgets, objectives and seeds, scored on the trees val split (9 tiles of another
Yellowstone photo) and, for forgetting, on all of the base's own validation data: the
``shapes+bccd`` val mixture its saved config records, 100 shapes images then BCCD's 87 (hence
``--forgetting-images 187``; the default 100 would score shapes alone). Arms go to
``runs/adapt_bench/trees/k<K>_m<M>_<objective>/seed<S>``. ``report`` covers both domains: BCCD
under the result's ``arms`` as before, trees under ``domains.trees``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_commit, machine, paired, results_dir, weights_id, write_result

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runs" / "adapt_bench" / "bccd"
BASES = REPO / "runs" / "grqo_sweep" / "shapes" / "sft"
BCCD_FOLDER = REPO.parent / "shared" / "data" / "bccd" / "BCCD"  # unless WORKBENCH_BCCD says
DEFAULT_SFT = REPO / "models" / "sft"  # models/defaults.json: the app's default SFT model
KS = ("all", "50", "10")
MINUTES = (10, 5, 20)
OBJECTIVES = ("sft", "grqo")
SEEDS = (0, 1, 2)
SWEEP_RUNNING = "the GRQO sweep is running; stop it first (budgets are wall-clock)"
CODE_FILE = "bench_code.json"  # beside a finished arm's adapt.json: its commit, CPU and base


@dataclass(frozen=True)
class Domain:
    """What one grid adapts: the named dataset, the base per seed and how results are labelled."""

    name: str
    ks: tuple[str, ...]
    base: Callable[[int], Path]
    base_hint: str  # how to make a missing base
    train_bases: Callable[[list[int]], list[str]] | None  # the command that makes them, if any
    forgetting_images: int
    setup: str
    label: str  # the domain's name in tables and figures
    base_domain: str  # the base's own data, scored for forgetting


DOMAINS = {
    "bccd": Domain(
        "bccd",
        KS,
        lambda seed: BASES / f"seed{seed}",
        "python benchmarks/grqo_sweep.py train shapes/sft/seed<k> trains it",
        lambda seeds: [
            sys.executable,
            str(REPO / "benchmarks" / "grqo_sweep.py"),
            "train",
            *(f"shapes/sft/seed{seed}" for seed in seeds),
        ],
        100,
        "shapes-only SFT base -> BCCD, python -m workbench adapt bccd --forgetting",
        "BCCD",
        "shapes",
    ),
    "trees": Domain(
        "trees",
        ("all", "10"),
        lambda seed: DEFAULT_SFT,
        "it ships with the repository (models/defaults.json)",
        None,
        187,  # the shapes+bccd val mixture: 100 shapes images, then BCCD's 87
        "default SFT model (models/sft: shapes + BCCD) -> deepforest trees, python -m workbench "
        "adapt trees --from models/sft --forgetting --forgetting-images 187",
        "trees",
        "shapes+BCCD",
    ),
}


def root(domain: str = "bccd") -> Path:
    """``runs/adapt_bench/<domain>`` (``ROOT`` is BCCD's)."""
    return ROOT if domain == "bccd" else ROOT.parent / domain


def arm_names(domain: str = "bccd") -> list[str]:
    """``all_m10_sft`` ...: the budget of 10 minutes first, then 5 and 20; k = all first."""
    return [f"{k}_m{m}_{o}" for m in MINUTES for k in DOMAINS[domain].ks for o in OBJECTIVES]


def folder(arm: str, seed: int, domain: str = "bccd") -> Path:
    k = arm.split("_", 1)[0]
    return root(domain) / f"k{k}_{arm.split('_', 1)[1]}" / f"seed{seed}"


def finished(path: Path) -> dict | None:
    record = path / "adapt.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    return data if "after" in data and "forgetting" in data else None


def recorded(domain: str = "bccd") -> dict[str, dict[int, dict]]:
    """``{arm: {seed: row}}`` of the committed ``adapt.json`` (rows as :func:`_row` makes them)."""
    path = results_dir() / "adapt.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    arms = old.get("arms", {}) if domain == "bccd" else old.get("domains", {}).get(domain, {})
    arms = arms if domain == "bccd" else arms.get("arms", {})
    where = _cpu(old.get("arm_machine", {}))  # rows from before each row named its machine
    return {
        arm: {int(seed): {"machine": where, **row} for seed, row in data["per_seed"].items()}
        for arm, data in arms.items()
    }


def _cpu(info: dict) -> dict:
    return {"cpu": info.get("cpu"), "cpu_flags": info.get("cpu_flags")}


def sweep_is_running() -> bool:
    """A worker of the GRQO sweep is alive and not stopped (``kill -STOP`` pauses one)."""
    for lock in (REPO / "runs" / "grqo_sweep").glob("*/*/seed*/sweep.lock"):
        try:
            pid = json.loads(lock.read_text())["pid"]
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, KeyError, IndexError):
            continue  # gone, or a lock being written
        if state not in ("T", "t", "Z"):
            return True
    return False


def pending(
    only: list[str] | None, seeds: list[int], domain: str = "bccd", redo: bool = False
) -> list[tuple[str, int]]:
    """The ``(arm, seed)`` pairs ``run`` trains, in order: those not finished here, nor held by
    the ledger unless ``redo`` (which runs them again here, on this machine's CPU and code)."""
    ledger = {} if redo else recorded(domain)
    return [
        (arm, seed)
        for seed in seeds
        for arm in arm_names(domain)
        if not (only and arm not in only)
        and not finished(folder(arm, seed, domain))
        and seed not in ledger.get(arm, {})
    ]


def missing_bases(todo: list[tuple[str, int]], domain: str = "bccd") -> list[int]:
    """The seeds of ``todo`` whose base holds no weights here (a new machine: the sweep's
    ledger stands for its runs, but an arm starts from the base's weights)."""
    base = DOMAINS[domain].base
    return sorted({seed for _, seed in todo if not has_weights(base(seed))})


def has_weights(run: Path) -> bool:
    """A run folder that finished training (a killed one has checkpoints but no summary, and
    ``grqo_sweep.py train`` resumes it), or a model folder as the app's defaults are."""
    return (run / "summary.json").is_file() or (run / "checkpoint.json").is_file()


def run(only: list[str] | None, seeds: list[int], domain: str = "bccd", redo: bool = False) -> None:
    spec = DOMAINS[domain]
    unknown = sorted(set(only or ()) - set(arm_names(domain)))
    if unknown:
        sys.exit(
            f"--only {' '.join(unknown)}: no such {domain} arm; the arms are "
            f"{', '.join(arm_names(domain))}"
        )
    todo = pending(only, seeds, domain, redo)
    env = bccd_env()
    missing = missing_bases(todo, domain)
    if missing:
        if spec.train_bases is None:
            sys.exit(f"{spec.base(missing[0])} is missing: {spec.base_hint}")
        if sweep_is_running():
            sys.exit(SWEEP_RUNNING)
        print(f"== training the missing bases of seeds {missing}: {spec.base_hint}", flush=True)
        if subprocess.run(spec.train_bases(missing), env=env, cwd=REPO).returncode:
            sys.exit(f"training the bases of seeds {missing} failed")
    for arm, seed in todo:
        out = folder(arm, seed, domain)
        if sweep_is_running():
            sys.exit(SWEEP_RUNNING)
        k, minutes, objective = arm.split("_")
        command = [
            sys.executable, "-m", "workbench", "adapt", domain,
            "--from", str(spec.base(seed)),
            "--objective", objective, "--minutes", minutes[1:], "--seed", str(seed),
            "--forgetting", "--forgetting-images", str(spec.forgetting_images),
            "--out", str(out), "--no-progress",
            *([] if k == "all" else ["--images", k]),
            *(["--overwrite"] if out.exists() else []),
        ]  # fmt: skip
        print(f"== {domain} {arm} seed {seed}", flush=True)
        run_arm(command, out, spec.base(seed), env, f"{arm} seed {seed}")


def bccd_env() -> dict[str, str]:
    """The environment of an arm: BCCD is the data of the bccd grid and half the forgetting
    data of the trees grid."""
    return {**os.environ, "WORKBENCH_BCCD": os.environ.get("WORKBENCH_BCCD", str(BCCD_FOLDER))}


def run_arm(command: list[str], out: Path, base: Path, env: dict, name: str) -> None:
    """Run one arm's ``workbench adapt`` command, then write ``CODE_FILE`` beside its
    adapt.json: the code and the CPU an arm runs on set how many steps its minutes buy; the
    base, where it starts."""
    code = {"commit": git_commit(), "machine": _cpu(machine()), "base": weights_id(base)}
    done = subprocess.run(command, env=env, cwd=REPO)
    if done.returncode:
        sys.exit(f"{name} failed (status {done.returncode})")
    (out / CODE_FILE).write_text(json.dumps(code))


def status(domain: str = "bccd") -> None:
    ledger = recorded(domain)
    for seed in SEEDS:
        for arm in arm_names(domain):
            out = folder(arm, seed, domain)
            state = (
                "done"
                if finished(out)
                else "recorded"  # in the committed adapt.json; its folder is not here
                if seed in ledger.get(arm, {})
                else "started"
                if out.exists()
                else "waiting"
            )
            print(f"{state:8} {domain} {arm} seed{seed}")


def _row(record: dict) -> dict:
    plan, trained = record["plan"], record["train"]
    flat = {
        "train_images": plan["train_images"],
        "steps": trained["steps"],
        "seconds_per_step": plan["seconds_per_step"],
        "stopped_by_time_limit": trained["stopped_by_time_limit"],
        "train_minutes": trained["seconds"] / 60,
    }
    alpha = record.get("config", {}).get("grqo", {}).get("alpha")
    if alpha is not None:  # the advantage weight the arm trained with, for the table's label
        flat["grqo_alpha"] = alpha
    for when in ("before", "after"):
        for protocol, scores in record[when].items():
            for key in ("AP", "AP50"):
                flat[f"{when}/{protocol}/{key}"] = scores[key]
    for when in ("before", "after"):
        for protocol, scores in record["forgetting"][when].items():
            flat[f"base_domain_{when}/{protocol}/AP"] = scores["AP"]
    return flat


def _summary(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    out = {"seeds": len(rows)}
    for key in keys:
        values = [r[key] for r in rows]
        out[key] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
        }
    return out


def finished_arms(domain: str = "bccd") -> dict:
    """``{arm: {"per_seed": {seed: row}, "summary": ...}}`` of the arms with a finished seed, here
    or in the ledger."""
    arms, ledger = {}, recorded(domain)
    for arm in arm_names(domain):
        rows = dict(ledger.get(arm, {}))
        for seed in SEEDS:
            if (record := finished(out := folder(arm, seed, domain))) is not None:
                code = json.loads(c.read_text()) if (c := out / CODE_FILE).is_file() else {}
                where = code.get("machine", _cpu(machine()))
                rows[seed] = {
                    "machine": where,
                    "commit": code.get("commit"),
                    "base": code.get("base"),  # None: ran before arms named their base
                    **_row(record),
                }
        rows = dict(sorted(rows.items()))
        if rows:
            arms[arm] = {"per_seed": rows, "summary": _summary(list(rows.values()))}
    return arms


PAIRED_KEYS = (  # GRQO's change over SFT in these, paired by seed
    "after/interactive/AP50",
    "after/cross_image/AP50",
    "after/interactive/AP",
    "after/cross_image/AP",
    "base_domain_after/interactive/AP",
)


def grqo_minus_sft(arms: dict) -> dict:
    """``{"<k>_m<minutes>": {"seeds": [...], key: paired}}``: GRQO minus SFT at the same k and
    budget, one difference per seed both objectives finished, for each of ``PAIRED_KEYS``."""
    out = {}
    for arm, sft in arms.items():
        cell = arm.removesuffix("_sft")
        if cell == arm or (grqo := arms.get(f"{cell}_grqo")) is None:
            continue
        seeds = sorted(set(sft["per_seed"]) & set(grqo["per_seed"]))
        if seeds:
            out[cell] = {"seeds": seeds} | {
                key: paired([grqo["per_seed"][s][key] - sft["per_seed"][s][key] for s in seeds])
                for key in PAIRED_KEYS
            }
    return out


def report() -> Path:
    """``adapt.json``: BCCD's arms under ``setup`` / ``arms`` (the keys readers know), the other
    domains under ``domains.<name>``; a figure and a table per domain with finished arms."""
    found = {domain: finished_arms(domain) for domain in DOMAINS}
    if not any(found.values()):
        sys.exit("no finished arm yet: python benchmarks/adapt.py run [--domain trees]")
    compared = {domain: grqo_minus_sft(arms) for domain, arms in found.items()}
    # Each row names the machine its arm ran on; arm_machine is this report's.
    payload = {
        "setup": DOMAINS["bccd"].setup,
        "arm_machine": machine(),
        "arms": found["bccd"],
        "grqo_minus_sft": compared["bccd"],
    }
    others = {
        domain: {"setup": DOMAINS[domain].setup, "arms": arms, "grqo_minus_sft": compared[domain]}
        for domain, arms in found.items()
        if domain != "bccd" and arms
    }
    if others:
        payload["domains"] = others
    path = write_result("adapt", payload)
    for domain, arms in found.items():
        if arms:
            name = "adapt.png" if domain == "bccd" else f"adapt_{domain}.png"
            _figure(arms, results_dir() / name, domain)
            print(table(arms, domain))
            if compared[domain]:
                print(paired_table(compared[domain], arms, domain))
    return path


def table(arms: dict, domain: str = "bccd") -> str:
    """The README's table, as the README shows it: AP50 on the domain's val split before ->
    after, and the base's own domain's AP after (before)."""
    spec = DOMAINS[domain]
    rows = []
    for arm, data in arms.items():
        k, minutes, objective = arm.split("_")
        s = data["summary"]
        m = functools.partial(_mean_sd, s)
        seeds = sorted(int(seed) for seed in data["per_seed"])
        rows.append([
            _k(k, s),
            minutes[1:], _objective(objective, s),
            str(len(seeds)) if len(seeds) > 1 else f"1 (seed {seeds[0]})",
            f"{s['steps']['mean']:.0f}",
            f"{m('before/interactive/AP50')} → **{m('after/interactive/AP50')}**",
            f"{m('before/cross_image/AP50')} → **{m('after/cross_image/AP50')}**",
            f"{m('base_domain_after/interactive/AP')} ({m('base_domain_before/interactive/AP')})",
        ])  # fmt: skip
    head = ["k", "minutes", "objective", "seeds", "steps"]
    head += [f"{spec.label} AP50 interactive before → after", "cross-image"]
    return _markdown([*head, f"{spec.base_domain} AP after (before)"], rows)


def _k(k: str, summary: dict) -> str:
    return f"all ({summary['train_images']['mean']:.0f})" if k == "all" else k


def _objective(objective: str, summary: dict) -> str:
    if objective == "sft":
        return "SFT"
    alpha = summary.get("grqo_alpha", {}).get("mean")
    return "GRQO" if alpha is None else f"GRQO α = {alpha:g}"


def paired_table(cells: dict, arms: dict, domain: str = "bccd") -> str:
    """GRQO minus SFT per k and budget: the mean difference and its 95 % t-interval over seeds."""
    head = ["k", "minutes", "seeds", "AP50 interactive", "AP50 cross-image", "AP interactive"]
    head += ["AP cross-image", f"{DOMAINS[domain].base_domain} AP after"]
    rows = []
    for cell, data in cells.items():
        k, minutes = cell.split("_")
        shown = [_interval(data[key]) for key in PAIRED_KEYS]
        label = _k(k, arms[f"{cell}_sft"]["summary"])
        rows.append([label, minutes[1:], str(len(data["seeds"])), *shown])
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells) + " |" for cells in (head, *rows)]
    return "\n".join([lines[0], "|---" * len(head) + "|", *lines[1:]])


def _interval(diff: dict) -> str:
    """``+0.004 [−0.092, +0.099]`` (typographic minus), bold when the interval excludes 0."""
    signed = lambda x: f"{x:+.3f}".replace("-", "−")  # noqa: E731
    if diff["n"] < 2:
        return signed(diff["mean"])
    text = f"{signed(diff['mean'])} [{signed(diff['low'])}, {signed(diff['high'])}]"
    return f"**{text}**" if diff["low"] > 0 or diff["high"] < 0 else text


def _mean_sd(summary: dict, key: str) -> str:
    sd = summary[key]["sd"]
    return f"{summary[key]['mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _figure(arms: dict, path: Path, domain: str = "bccd") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, protocol in zip(axes, ("interactive", "cross_image"), strict=True):
        for k in DOMAINS[domain].ks:
            for objective, style in (("sft", "-o"), ("grqo", "--s")):
                points = sorted(
                    (int(arm.split("_")[1][1:]), data["summary"][f"after/{protocol}/AP50"])
                    for arm, data in arms.items()
                    if arm.startswith(f"{k}_") and arm.endswith(objective)
                )
                if points:
                    xs = [p[0] for p in points]
                    ys = [p[1]["mean"] for p in points]
                    errs = [p[1]["sd"] or 0 for p in points]
                    ax.errorbar(xs, ys, yerr=errs, fmt=style, capsize=3, label=f"k={k} {objective}")
        title = f"{DOMAINS[domain].label} val, {protocol} prompts"
        ax.set(title=title, xlabel="budget (minutes, 2 CPU cores)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP50 after adapt")
    axes[1].legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument(
        "--only",
        nargs="*",
        help="arms K_mMINUTES_OBJECTIVE, e.g. all_m10_sft (K: all, 50 or 10 for bccd; all or 10 "
        "for trees)",
    )
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--domain", choices=list(DOMAINS), default="bccd")
    p.add_argument(
        "--redo",
        action="store_true",
        help="also run the seeds the committed adapt.json holds (each replaces its record)",
    )
    p = sub.add_parser("status")
    p.add_argument("--domain", choices=list(DOMAINS), help="default: every domain")
    sub.add_parser("report")
    args = parser.parse_args()
    if args.command == "run":
        run(args.only, args.seeds, args.domain, args.redo)
    elif args.command == "status":
        for domain in [args.domain] if args.domain else DOMAINS:
            status(domain)
    else:
        print(report())


if __name__ == "__main__":
    main()
