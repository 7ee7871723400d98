"""Which GRQO weights help, and where? A resumable sweep of the reward weight and its ablations.

    python benchmarks/grqo_sweep.py run --workers 2   # train and evaluate whatever is missing
    python benchmarks/grqo_sweep.py status            # done / running / waiting, per run
    python benchmarks/grqo_sweep.py report            # benchmarks/results/grqo_sweep.json + PNG
    python benchmarks/grqo_sweep.py train RUN ...     # weights only, e.g. shapes/sft/seed0

The released config has alpha = 0.01, while a public question on the DINO-R1 repository (#7)
reports 10e3 as the paper's best reward weight (research/dino-r1.md §11.2). Every arm uses the
``small`` detector, batch 8, the same data, seeds and budget; only the GRQO settings differ:

- ``shapes`` ("1+N" schedule): per seed, one epoch of SFT on synthetic shapes (base categories,
  600 images: 75 steps) is the shared start; every arm then trains 3 more epochs from it (225
  steps, the last at lr x 0.1): SFT, or GRQO. Evaluated on all categories, base and novel apart.
- ``bccd_ft`` (fine-tuning onto an unseen domain, the paper's largest gain): the shapes SFT arm
  of the same seed is fine-tuned on BCCD blood cells for 6 epochs (150 steps, lr 1e-4).

Arms: SFT; GRQO with alpha in {0.01, 1, 10, 100, 1e4} (beta 0.04, the reference drawing its own
exemplar, as released); the policy-gradient form at alpha in {0.01, 1}; then, at the alpha that
wins on validation (mean paired gain over SFT in cross-image AP, one exemplar) and at the
released 0.01, beta = 0 (``beta0_a<alpha>``) and a reference sharing the policy's exemplar
(``shared_exemplar_a<alpha>``). Seeds 0, 1, 2.

Each run is an ordinary run folder under ``runs/grqo_sweep/<domain>/<arm>/seed<k>``; a run that
was interrupted continues from its latest checkpoint (``--resume``), a finished one is skipped,
so the sweep completes across several sittings. Workers claim runs with a lock file holding their
pid (a dead pid's lock is taken over).

The committed report, ``benchmarks/results/grqo_sweep.json``, is also the sweep's ledger: a run
whose folder is gone (a new machine) but whose evaluation the report holds, with the same
overrides, counts as done. A run that is still to train needs its origin's weights here, so a
missing origin is trained again (not evaluated again when its record stands). Every run records
the sha256 of the weights it started from (``origin``; null for runs recorded before origins were
fingerprinted, which share their seed's origin), and a GRQO arm is only ever paired with the SFT
arm of the same seed *and* origin: when a retrained origin differs from the lost one (another
CPU rounds differently), the SFT arm of that seed trains again from it, and the report keeps
both pairs. Once the ledger holds every run, ``run`` has nothing to train on a new machine;
``train RUN ...`` trains the named runs' weights there (after the runs they start from, when
those are gone too) without evaluating them: what ``benchmarks/adapt.py`` starts from.

After training, each run is evaluated on validation and on the held-out test split:
interactive, cross-image with 1 exemplar (on test also the AP spread over 5 exemplar draws) and
with 8 exemplars, with the query-level metrics; model selection reads validation only, the
report gives test.

Every GRQO arm reports its gradient shares (``grad_norm_*``, ``grad_cos_*``, ``grad_share_*``),
the mean of what training logged every 25 steps. A run evaluated here that logged none (trained
before the shares reached the log) gets them measured on its final weights and saved reference
(``sweep_shares.json``, ``gradient_shares_from: "final weights"``); a recorded run without them
and without its folder trains again.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, paired, results_dir, weights_id, write_result

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runs" / "grqo_sweep"
BCCD_FOLDER = REPO.parent / "shared" / "data" / "bccd" / "BCCD"  # unless WORKBENCH_BCCD says
SEEDS = (0, 1, 2)
ALPHAS = (0.01, 1.0, 10.0, 100.0, 1e4)
PG_ALPHAS = (0.01, 1.0)
COMMON = [
    "model.size=small",
    "train.batch_size=8",
    "train.checkpoint_every=25",
    "train.keep_checkpoints=1",
    "train.log_every=5",
    "train.eval_every_epochs=0",
    "data.crop_prob=0.3",
    "grqo.grad_norm_every=25",
]
SHAPES = [
    "data.name=shapes",
    "data.shapes_train_images=600",
    "data.shapes_val_images=150",
    "data.shapes_test_images=150",
    "data.shapes_image_size=256",
    "data.min_size=256",
    "data.max_size=256",
    "eval.pool_split=prompts",
]
BCCD = ["data.name=bccd", "data.min_size=256", "data.max_size=342", "eval.pool_split=train"]
STAGES = {  # domain -> (data, training of every arm, the run each arm starts from)
    "shapes": (SHAPES, ["train.epochs=3", "train.lr=2e-4", "train.lr_drop_epochs=[2]"], "base"),
    "bccd_ft": (BCCD, ["train.epochs=6", "train.lr=1e-4", "train.lr_drop_epochs=[5]"], "sft"),
}
BASE = ["train.objective=sft", "train.epochs=1", "train.lr=2e-4", "train.warmup_steps=50"]
SELECT = ("val", "cross_image_k1", "AP")  # split, evaluation, metric that picks the best alpha
EVALUATIONS = {  # name -> (protocol, exemplars per class, exemplar draws on val, on test)
    "interactive": ("interactive", 1, 1, 1),
    "cross_image_k1": ("cross_image", 1, 1, 5),  # the AP spread over draws: test only
    "cross_image_k8": ("cross_image", 8, 1, 1),
}


def _alpha_name(alpha: float) -> str:
    return f"{alpha:g}".replace("+", "")


def stage_one_arms() -> dict[str, list[str]]:
    arms = {"sft": ["train.objective=sft"]}
    for a in ALPHAS:
        arms[f"grqo_a{_alpha_name(a)}"] = ["train.objective=grqo", f"grqo.alpha={a}"]
    for a in PG_ALPHAS:
        arms[f"pg_a{_alpha_name(a)}"] = [
            "train.objective=grqo",
            f"grqo.alpha={a}",
            "grqo.advantage_mode=policy_gradient",
        ]
    return arms


RELEASE_ALPHA = 0.01  # the released config's grpo_alpha; stage two always runs at it too
STAGE_TWO = ("beta0_a", "shared_exemplar_a")  # stage-two arm names: one of these, then alpha


def stage_two_arms(alpha: float) -> dict[str, list[str]]:
    """The ablations at ``alpha``: without the KL, and the reference sharing the exemplar."""
    grqo = ["train.objective=grqo", f"grqo.alpha={alpha}"]
    name = _alpha_name(alpha)
    return {
        f"beta0_a{name}": [*grqo, "grqo.beta=0"],
        f"shared_exemplar_a{name}": [*grqo, "grqo.reference_exemplars=shared"],
    }


@dataclass
class Run:
    name: str  # domain/arm/seedK
    overrides: list[str]
    after: list[str] = field(default_factory=list)  # runs that must be trained first

    @property
    def folder(self) -> Path:
        return ROOT / self.name

    @property
    def trained(self) -> bool:
        return (self.folder / "summary.json").is_file()

    @property
    def evaluated(self) -> bool:
        return (self.folder / "sweep_eval.json").is_file()

    @property
    def failed(self) -> str | None:
        """Why the run stopped (e.g. a diverging loss at a large alpha), if it did."""
        path = self.folder / "sweep_failed.json"
        return json.loads(path.read_text())["error"] if path.is_file() else None

    @property
    def domain(self) -> str:
        return self.name.split("/")[0]

    @property
    def arm(self) -> str:
        return self.name.split("/")[1]

    @property
    def origin(self) -> str | None:
        """The sha256 of the weights this run started from, written when its training began."""
        path = self.folder / "sweep_origin.json"
        return json.loads(path.read_text())["origin"] if path.is_file() else None


# --- the ledger: what the committed report already holds ----------------------------------------


def _relative(overrides: list[str]) -> list[str]:
    """Overrides as the report writes them: repository-relative, naming no machine's folders."""
    return [o.replace(f"{REPO}/", "") for o in overrides]


_LEDGER: dict = {}


def _ledger() -> dict:
    """The committed report (``{}`` before the first): its rows by run name, and its machine."""
    path = results_dir() / "grqo_sweep.json"
    info = path.stat() if path.is_file() else None
    stamp = (str(path), info.st_mtime_ns, info.st_size) if info else (str(path),)
    if _LEDGER.get("stamp") != stamp:
        report = json.loads(path.read_text()) if info else {}
        rows: dict[str, list[dict]] = {}
        for row in report.get("runs", []):
            row.setdefault("origin", None)
            row.setdefault("machine", _cpu(report.get("machine") or {}))
            rows.setdefault(row["run"], []).append(row)
        _LEDGER.update(stamp=stamp, rows=rows)
    return _LEDGER["rows"]


def _cpu(machine: dict) -> dict:
    return {"cpu": machine.get("cpu"), "cpu_flags": machine.get("cpu_flags")}


@functools.cache
def _this_cpu() -> dict:
    """The CPU runs evaluated in this machine's folders ran on (read once)."""
    return _cpu(machine())


def recorded(run: Run) -> list[dict]:
    """The report's evaluated rows of ``run`` with the overrides the plan gives it today."""
    overrides = _relative(run.overrides)
    return [
        row
        for row in _ledger().get(run.name, [])
        if row.get("evaluation") and row["overrides"] == overrides
    ]


ENTRY_KEYS = ("origin", "evaluation", "gradient_shares", "gradient_shares_from", "seconds")


def _shares_entry(run: Run) -> dict:
    shares, source = gradient_shares(run)
    return {"gradient_shares": shares, "gradient_shares_from": source}


def entries(run: Run) -> list[dict]:
    """Every evaluation of ``run``, one per origin: its folder's first, then the ledger's."""
    found = []
    if run.evaluated:
        times = run.folder / "sweep_times.json"
        found.append(
            {
                "origin": run.origin,
                "evaluation": json.loads((run.folder / "sweep_eval.json").read_text()),
                **_shares_entry(run),
                "seconds": json.loads(times.read_text()) if times.is_file() else {},
                "machine": _this_cpu(),
            }
        )
    for row in recorded(run):
        if all(row["origin"] != f["origin"] for f in found):
            found.append({k: row.get(k) for k in ENTRY_KEYS} | {"machine": row["machine"]})
    return found


def pair(domain: str, arm: str, seed: int, runs: dict[str, Run]) -> tuple[dict, dict] | None:
    """The evaluations of ``arm`` and of SFT for one seed that started from the same weights."""
    ours, sft = runs.get(f"{domain}/{arm}/seed{seed}"), runs.get(f"{domain}/sft/seed{seed}")
    if ours is None or sft is None:
        return None
    partners = entries(sft)
    for entry in entries(ours):
        match = next((p for p in partners if p["origin"] == entry["origin"]), None)
        if match is not None:
            return entry, match
    return None


def done(run: Run, runs: dict[str, Run]) -> bool:
    """Nothing left to do for ``run``: evaluated here or in the ledger (or failed), a GRQO arm
    with its gradient shares (logged, or measured on its final weights when it logged none).

    A recorded SFT arm trains again when its origin had to be trained again here with different
    weights and an arm of its seed is to train from them, since arms pair with SFT by origin."""
    if run.failed:
        return True
    if run.evaluated:
        return not wants_shares(run) or bool(gradient_shares(run)[0])
    records = recorded(run)
    if not records:
        return False
    if wants_shares(run) and not any(row.get("gradient_shares") for row in records):
        return False  # trained before shares reached the log: train it again here
    if not run.after or not runs[run.after[0]].trained or run.arm != "sft":
        return True
    here = weights_id(runs[run.after[0]].folder)
    if any(row["origin"] == here for row in records):
        return True
    siblings = [
        r for r in runs.values() if r.after == run.after and r.domain == run.domain and r != run
    ]
    return not any(
        (s.evaluated and s.origin == here) or not (s.evaluated or s.failed or recorded(s))
        for s in siblings
    )


def needs(run: Run, runs: dict[str, Run], out: list[Run]) -> None:
    """Append ``run`` to ``out`` when what it starts from is trained here, else that origin
    (recursively): a run whose origin's folder is gone waits for the origin to train again."""
    for name in run.after:
        origin = runs[name]
        if not origin.trained:
            if not origin.failed:
                needs(origin, runs, out)
            return
    if run not in out:
        out.append(run)


def _arm_run(domain: str, arm: str, changes: list[str], seed: int) -> Run:
    data, schedule, start = STAGES[domain]
    origin = f"shapes/{start}/seed{seed}"
    overrides = [*COMMON, *data, *schedule, *changes, f"train.seed={seed}"]
    return Run(
        f"{domain}/{arm}/seed{seed}",
        [*overrides, f"model.init_from={ROOT / origin}"],
        after=[origin],
    )


def stage_one() -> list[Run]:
    """The bases and every stage-one arm, unordered."""
    runs = [
        Run(f"shapes/base/seed{s}", [*COMMON, *SHAPES, *BASE, f"train.seed={s}"]) for s in SEEDS
    ]
    for domain in STAGES:
        for s in SEEDS:
            runs += [_arm_run(domain, a, c, s) for a, c in stage_one_arms().items()]
    return runs


def plan() -> list[Run]:
    """Every run, in the order workers take them: bases, the SFT arms, then the fine-tuning
    domain (the paper's largest gain is there) before shapes; within a domain stage one, then
    stage two once the best alpha is known, at that alpha and at the released one (which part
    of GRQO helps matters more than a second task); seed 0 of every arm before seeds 1 and 2."""
    runs = stage_one()
    for domain in STAGES:
        best = best_alpha(domain, runs)
        for alpha in sorted({best, RELEASE_ALPHA}) if best is not None else []:
            for arm, changes in stage_two_arms(alpha).items():
                runs += [_arm_run(domain, arm, changes, s) for s in SEEDS]
    order = {"base": 0, "sft": 1}
    return sorted(
        runs,
        key=lambda r: (
            order.get(r.arm, 2),
            r.domain != "bccd_ft",
            r.arm.startswith(STAGE_TWO),
            r.name.endswith(("seed1", "seed2")),
            r.name,
        ),
    )


# --- claiming runs ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run: Run) -> bool:
    """Take ``run`` for this process unless a live process holds it."""
    run.folder.mkdir(parents=True, exist_ok=True)
    lock = run.folder / "sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            if owner.get("host") == socket.gethostname() and _alive(int(owner.get("pid", 0))):
                return False
            lock.unlink(missing_ok=True)  # a stale lock of a process that is gone
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
        return True
    return False


def release(run: Run) -> None:
    (run.folder / "sweep.lock").unlink(missing_ok=True)


# --- one run ------------------------------------------------------------------------------------


def config_of(run: Run):
    from workbench.config import load_config

    return load_config(None, [*run.overrides, f"train.out_dir={run.folder}"])


def train_run(run: Run, runs: dict[str, Run]) -> None:
    from workbench.checkpoint import find_latest
    from workbench.experiment import train

    if find_latest(run.folder) is None:  # nothing to resume: start clean
        (run.folder / "metrics.jsonl").unlink(missing_ok=True)
        origin = weights_id(runs[run.after[0]].folder) if run.after else None
        (run.folder / "sweep_origin.json").write_text(json.dumps({"origin": origin}))
    start = time.perf_counter()
    train(config_of(run), resume=True)
    _add_seconds(run, "train_seconds", time.perf_counter() - start)


def evaluate_run(run: Run) -> None:
    from workbench.evaluation import evaluate
    from workbench.experiment import open_evaluation_data
    from workbench.model.build import from_pretrained
    from workbench.predictor import Predictor

    cfg, start = config_of(run), time.perf_counter()
    model = from_pretrained(run.folder)
    predictor = Predictor.from_model(model, min_size=cfg.data.min_size, max_size=cfg.data.max_size)
    results = {}
    for split in ("val", "test"):
        data, pool = open_evaluation_data(cfg, split)
        results[split] = {}
        for name, (protocol, k, *draws) in EVALUATIONS.items():
            result = evaluate(
                predictor,
                data,
                protocol=protocol,
                exemplars_per_class=k,
                prompt_pool=pool if protocol == "cross_image" else None,
                exemplar_draws=draws[split == "test"],
                loss=cfg.loss,
                seed=cfg.eval.seed,
            )
            record = result.to_dict()
            record.pop("records")
            results[split][name] = record
    path = run.folder / "sweep_eval.json"
    path.with_suffix(".tmp").write_text(json.dumps(results, indent=1, default=float))
    path.with_suffix(".tmp").replace(path)
    _add_seconds(run, "eval_seconds", time.perf_counter() - start)


def _add_seconds(run: Run, key: str, seconds: float) -> None:
    path = run.folder / "sweep_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[key] = times.get(key, 0.0) + seconds
    path.write_text(json.dumps(times))


# --- workers ------------------------------------------------------------------------------------


def work() -> None:
    """Take the first run that is ready and not held, train and evaluate it; repeat until every
    run is done (waiting while runs this one needs are in other workers' hands)."""
    import torch

    torch.set_num_threads(int(os.environ.get("SWEEP_THREADS", "1")))
    while True:
        runs = {r.name: r for r in plan()}
        ready: list[Run] = []
        for run in runs.values():
            if not done(run, runs):
                needs(run, runs, ready)
        if not ready:
            return  # everything is done, or what is left waits on runs that failed
        for run in ready:
            if claim(run):
                try:
                    if not run.trained:
                        train_run(run, runs)
                    if not done(run, runs):  # an origin trained again only to start others
                        if not run.evaluated:
                            evaluate_run(run)
                        if not done(run, runs):  # trained before shares reached the log
                            probe_shares(run)
                except Exception as err:  # recorded; the sweep goes on with the other runs
                    (run.folder / "sweep_failed.json").write_text(
                        json.dumps({"error": f"{type(err).__name__}: {err}"})
                    )
                    print(f"{run.name} failed: {type(err).__name__}: {err}", flush=True)
                finally:
                    release(run)
                break
        else:
            time.sleep(30)  # everything ready is held by other workers


def spawn(workers: int) -> int:
    """``workers`` processes of :func:`work`, one torch thread each; waits for them."""
    env = {**os.environ, "SWEEP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.setdefault("WORKBENCH_BCCD", str(BCCD_FOLDER))
    procs = []
    for i in range(workers):
        log = (ROOT / f"worker{i}.log").open("a")
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "work"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        time.sleep(5)  # staggered, so they claim different runs
    return max(p.wait() for p in procs)


def to_train(names: list[str], runs: dict[str, Run]) -> list[Run]:
    """The runs ``train`` trains, in order, for ``names``: each named run whose folder holds no
    trained model, after the runs it starts from when theirs are gone too (recursively)."""
    unknown = sorted(set(names) - set(runs))
    if unknown:
        sys.exit(f"no such run: {' '.join(unknown)}; `status` lists the sweep's runs")
    out: list[Run] = []

    def add(run: Run) -> None:
        for name in run.after:
            add(runs[name])
        if not run.trained and run not in out:
            out.append(run)

    for name in names:
        add(runs[name])
    return out


def train_named(names: list[str]) -> None:
    """Train ``names`` here without evaluating them: the weights another benchmark starts from
    (``benchmarks/adapt.py``'s shapes bases) on a machine that holds only the ledger, where
    ``run`` has nothing left to do. Uses every core (one run at a time)."""
    runs = {r.name: r for r in plan()}
    for run in to_train(names, runs):
        if not claim(run):
            sys.exit(f"{run.name} is held by a running worker; wait for it or stop it")
        print(f"== training {run.name}", flush=True)
        try:
            train_run(run, runs)
        finally:
            release(run)


# --- results ------------------------------------------------------------------------------------


def metric(evaluation: dict, split: str, name: str, key: str, part: str | None = None) -> float:
    record = evaluation[split][name]
    stats = record["split_stats"][part] if part else record["stats"]
    value = stats.get(key) if key in stats else record["query_metrics"].get(key)
    return math.nan if value is None else float(value)


def best_alpha(domain: str, runs: list[Run] | None = None) -> float | None:
    """The alpha with the largest mean paired gain over SFT on validation, once every stage-one
    GRQO arm of ``domain`` has an SFT partner for every seed; None before."""
    by_name = {r.name: r for r in runs or stage_one()}
    gains = {}
    for alpha in ALPHAS:
        deltas = []
        for s in SEEDS:
            found = pair(domain, f"grqo_a{_alpha_name(alpha)}", s, by_name)
            if found is None:
                return None
            ours, sft = (e["evaluation"] for e in found)
            deltas.append(metric(ours, *SELECT) - metric(sft, *SELECT))
        gains[alpha] = sum(deltas) / len(deltas)
    return max(gains, key=gains.get)


PROBE_BATCHES = 4  # training batches the gradient shares of a run that logged none are measured on


def wants_shares(run: Run) -> bool:
    """A GRQO arm, whose gradient shares the report holds."""
    return run.arm not in ("base", "sft")


def gradient_shares(run: Run) -> tuple[dict[str, float], str | None]:
    """The run's gradient shares and how they were measured: the mean of every share metric
    training ``logged`` (every ``grqo.grad_norm_every`` steps), else what :func:`probe_shares`
    measured on its ``final weights``; ``({}, None)`` for neither."""
    from workbench.grqo_probes import SHARE_PREFIXES

    sums: dict[str, list[float]] = {}
    path = run.folder / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        for key, value in json.loads(line).items():
            if key.startswith(SHARE_PREFIXES) and value is not None:
                sums.setdefault(key, []).append(float(value))
    if sums:
        return {k: sum(v) / len(v) for k, v in sums.items()}, "logged"
    probed = run.folder / "sweep_shares.json"
    if probed.is_file():
        return json.loads(probed.read_text())["shares"], "final weights"
    return {}, None


def probe_shares(run: Run) -> None:
    """The gradient shares of a GRQO run trained before they reached its log: measured on its
    final checkpoint (weights and the objective's saved reference) with the config it trained
    with, on ``PROBE_BATCHES`` fixed training batches at its last step. Writes
    ``sweep_shares.json``; changes nothing else in the run."""
    from workbench.checkpoint import find_latest, load_checkpoint
    from workbench.config import load_config
    from workbench.experiment import build_objective, open_splits
    from workbench.grqo_probes import fixed_batches, measure_gradient_shares
    from workbench.model.build import from_pretrained
    from workbench.objectives.base import StepInfo

    start = time.perf_counter()
    cfg = load_config(run.folder / "config.yaml", ["grqo.grad_norm_every=1"])
    latest = find_latest(run.folder)
    model = from_pretrained(run.folder).train()
    saved = load_checkpoint(latest)
    train_set, _, _ = open_splits(cfg)
    objective = build_objective(cfg, model, train_set)
    objective.load_state_dict(saved.objective_state or {})
    steps = saved.trainer_state["position"]["global_step"]  # the run's last step was its last
    info = StepInfo(
        step=steps - 1, epoch=saved.trainer_state["position"]["epoch"], total_steps=steps
    )
    batches = fixed_batches(train_set, cfg.train.batch_size, PROBE_BATCHES, seed=cfg.train.seed)
    shares = measure_gradient_shares(model, objective, batches, info, seed=cfg.train.seed)
    record = {
        "shares": shares,
        "measured": (
            f"after training, at step {info.step}, on {PROBE_BATCHES} fixed training batches of "
            f"{cfg.train.batch_size} (the run logged none)"
        ),
    }
    path = run.folder / "sweep_shares.json"
    path.with_suffix(".tmp").write_text(json.dumps(record, indent=1))
    path.with_suffix(".tmp").replace(path)
    _add_seconds(run, "probe_seconds", time.perf_counter() - start)


HEADLINES = {  # what the README reports, per domain: (evaluation, metric, category split)
    "shapes": [
        ("cross_image_k1", "AP", None),
        ("cross_image_k1", "AP", "novel"),
        ("cross_image_k8", "AP", "novel"),
        ("interactive", "AP", None),
    ],
    "bccd_ft": [
        ("cross_image_k1", "AP", None),
        ("cross_image_k8", "AP", None),
        ("interactive", "AP", None),
    ],
}
QUERY_METRICS = (  # also summarised per arm as paired gains over SFT, on these evaluations
    "recall_top_third",
    "recall_top_two_thirds",
    "spearman_select_reward",
    "ece_objectness",
    "ap_std_draws",  # test, cross-image with one exemplar only (5 draws)
)
QUERY_EVALUATIONS = ("interactive", "cross_image_k1")


def report() -> Path:
    """Every run (one row per origin it was evaluated from; the ledger's rows stay) and, per
    arm, its paired gain over SFT in AP and in each query metric."""
    runs, rows = plan(), []
    for run in runs:
        state = {
            "run": run.name,
            "overrides": _relative(run.overrides),
            "failed": run.failed,
        }
        found = entries(run)
        for entry in found:
            rows.append({**state, "trained": True, "evaluated": True, **entry})
        if not found:
            rows.append(
                {
                    **state,
                    "trained": run.trained,
                    "evaluated": False,
                    "origin": run.origin,
                    "evaluation": None,
                    **_shares_entry(run),
                    "seconds": {},
                    "machine": None,
                }
            )
    by_name = {r.name: r for r in runs}
    summary = {}
    for domain, headlines in HEADLINES.items():
        arms = sorted({r.arm for r in runs if r.domain == domain})
        summary[domain] = {"best_alpha_on_val": best_alpha(domain, runs), "arms": {}}
        for arm in (a for a in arms if a not in ("sft", "base")):  # GRQO arms
            pairs = {s: pair(domain, arm, s, by_name) for s in SEEDS}
            pairs = {s: p for s, p in pairs.items() if p is not None}
            entry: dict = {
                "pairs": [{"seed": s, "origin": p[0]["origin"]} for s, p in pairs.items()],
                "gradient_shares": mean_shares([p[0] for p in pairs.values()]),
            }
            queries = [(name, key, None) for name in QUERY_EVALUATIONS for key in QUERY_METRICS]
            for split in ("val", "test"):
                for name, key, part in [*headlines, *queries]:
                    deltas = [
                        metric(ours["evaluation"], split, name, key, part)
                        - metric(sft["evaluation"], split, name, key, part)
                        for ours, sft in pairs.values()
                    ]
                    if deltas and all(math.isfinite(d) for d in deltas):
                        label = f"{split}/{name}/{key}" + (f"_{part}" if part else "")
                        entry[f"delta/{label}"] = paired(deltas)
            summary[domain]["arms"][arm] = entry
    path = write_result("grqo_sweep", {"budget": _budget(), "summary": summary, "runs": rows})
    figure(summary)
    return path


SUMMARY_SHARES = ("grad_share_adv", "grad_share_kl", "grad_cos_adv_sft", "grad_cos_kl_sft")


def mean_shares(found: list[dict]) -> dict:
    """Per key of ``SUMMARY_SHARES``, the mean over the evaluations ``found`` that hold it, with
    how many did (``n``) and how they were measured (``from``)."""
    have = [e for e in found if e.get("gradient_shares")]
    out: dict = {"n": len(have), "from": sorted({str(e.get("gradient_shares_from")) for e in have})}
    for key in SUMMARY_SHARES:
        values = [e["gradient_shares"][key] for e in have if key in e["gradient_shares"]]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _budget() -> dict:
    return {
        "seeds": list(SEEDS),
        "alphas": list(ALPHAS),
        "policy_gradient_alphas": list(PG_ALPHAS),
        "common": COMMON,
        "shapes": SHAPES,
        "bccd": BCCD,
        "base": BASE,
        "stages": {k: v[1] for k, v in STAGES.items()},
        "select": list(SELECT),
        "evaluations": EVALUATIONS,
    }


def figure(summary: dict) -> Path:
    """Test gain over SFT (cross-image AP, one exemplar; paired by seed, 95 % interval) against
    alpha, one panel per domain; below it, GRQO's gradient shares against alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(summary), figsize=(5 * len(summary), 7.2), squeeze=False)
    for ax, (domain, info) in zip(axes[1], summary.items(), strict=True):
        _shares_panel(ax, domain, info)
    for ax, (domain, info) in zip(axes[0], summary.items(), strict=True):
        for prefix, colour, label in (
            ("grqo_a", "tab:blue", "GRQO (through reward)"),
            ("pg_a", "tab:orange", "policy gradient"),
        ):
            xs, ys, lo, hi = [], [], [], []
            for arm, entry in info["arms"].items():
                d = entry.get("delta/test/cross_image_k1/AP")
                if arm.startswith(prefix) and d:
                    xs.append(float(arm[len(prefix) :]))
                    ys.append(d["mean"])
                    lo.append(d["mean"] - d["low"] if d["n"] > 1 else 0)
                    hi.append(d["high"] - d["mean"] if d["n"] > 1 else 0)
            order = sorted(range(len(xs)), key=xs.__getitem__)
            if order:
                ax.errorbar(
                    [xs[i] for i in order],
                    [ys[i] for i in order],
                    yerr=[[lo[i] for i in order], [hi[i] for i in order]],
                    marker="o",
                    capsize=3,
                    color=colour,
                    label=label,
                )
        _alpha_axes(ax, 0, "test AP gain over SFT", f"{domain}: cross-image AP, 1 exemplar")
        if not ax.get_legend_handles_labels()[0]:
            ax.text(0.5, 0.5, "no GRQO run evaluated yet", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path = results_dir() / "grqo_sweep.png"
    fig.savefig(path, dpi=120)
    return path


def _shares_panel(ax, domain: str, info: dict) -> None:
    """Each GRQO part's gradient norm as a share of the SFT loss's, against alpha (log-log)."""
    for key, colour, label in (
        ("grad_share_adv", "tab:blue", "advantage term / SFT"),
        ("grad_share_kl", "tab:green", "KL term / SFT"),
    ):
        points = sorted(
            (float(arm[len("grqo_a") :]), entry["gradient_shares"][key])
            for arm, entry in info["arms"].items()
            if arm.startswith("grqo_a") and key in entry.get("gradient_shares", {})
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=colour, label=label)
    _alpha_axes(ax, 1, "gradient norm / SFT's", f"{domain}: gradient norms over SFT's, seed mean")
    if ax.get_legend_handles_labels()[0]:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no gradient shares yet", ha="center", transform=ax.transAxes)


def _alpha_axes(ax, level: float, ylabel: str, title: str) -> None:
    """A panel against alpha (log scale): a grey line at ``level``, the released alpha dotted,
    the labels, and a legend when anything was drawn."""
    ax.axhline(level, color="grey", lw=0.8)
    ax.axvline(RELEASE_ALPHA, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"reward weight alpha (dotted: released {RELEASE_ALPHA:g})")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def status() -> None:
    runs = {r.name: r for r in plan()}
    for run in runs.values():
        lock = run.folder / "sweep.lock"
        state = (
            ("evaluated" if done(run, runs) else "no shares")
            if run.evaluated
            else "failed"
            if run.failed
            else "recorded"  # in the committed report; its folder is not here
            if done(run, runs)
            else "trained"
            if run.trained
            else "held"
            if lock.is_file()
            else "started"
            if run.folder.is_dir()
            else "waiting"
        )
        print(f"{state:10s} {run.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start workers and wait for them")
    run.add_argument("--workers", type=int, default=2)
    sub.add_parser("work", help="one worker (what `run` starts)")
    train = sub.add_parser("train", help="train the named runs (and their origins), no evaluation")
    train.add_argument("names", nargs="+", metavar="RUN", help="e.g. shapes/sft/seed0")
    sub.add_parser("status")
    sub.add_parser("report")
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        return spawn(args.workers)
    if args.command == "work":
        os.environ.setdefault("WORKBENCH_BCCD", str(BCCD_FOLDER))
        work()
    elif args.command == "train":
        os.environ.setdefault("WORKBENCH_BCCD", str(BCCD_FOLDER))
        train_named(args.names)
    elif args.command == "status":
        status()
    else:
        print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
