"""What freezing the backbone's first blocks costs and saves when adapting: paired BCCD runs.

    python benchmarks/frozen_blocks.py run [--blocks 4] [--steps 150] [--seeds 1 2]
    python benchmarks/frozen_blocks.py report   # results/frozen_blocks.json

``train.frozen_backbone_blocks`` (``adapt --frozen-blocks``) keeps the MobileNetV2's first blocks
at the base's weights. Each seed adapts the shapes-only SFT base of ``benchmarks/adapt.py``'s
BCCD grid (``runs/grqo_sweep/shapes/sft/seed<k>``, trained first when missing) to BCCD with
every training image for exactly ``--steps`` steps, once with the whole backbone training and
once with ``--blocks`` blocks frozen: ``python -m workbench adapt bccd --from BASE --steps S
--minutes 60 --seed K --forgetting [--frozen-blocks B]``. The same steps on the same data, so AP
compares the two models and the training time what freezing saves. Runs go to
``runs/frozen_blocks_bench/s<S>_f<B>/seed<K>``, one at a time (nothing else may run beside
them: seconds are measured); a finished one is skipped, an unfinished one run again from the
start. ``report``: per run AP and AP50 on BCCD's held-out split after (interactive and
cross-image prompts), shapes AP after (forgetting), the median seconds of a training step (its
forward, backward and update, from the run's metrics log), with the commit
and CPU it ran on; frozen minus whole, paired by seed (mean and 95 % t-interval).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapt as grid
from common import paired, write_result

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runs" / "frozen_blocks_bench"
PAIRED_KEYS = (*grid.PAIRED_KEYS, "seconds_per_train_step")


def folder(steps: int, blocks: int, seed: int) -> Path:
    return ROOT / f"s{steps}_f{blocks}" / f"seed{seed}"


def command(steps: int, blocks: int, seed: int) -> list[str]:
    out = folder(steps, blocks, seed)
    return [
        sys.executable, "-m", "workbench", "adapt", "bccd",
        "--from", str(grid.DOMAINS["bccd"].base(seed)),
        "--steps", str(steps), "--minutes", "60", "--seed", str(seed),
        "--frozen-blocks", str(blocks), "--forgetting", "--out", str(out), "--no-progress",
        *(["--overwrite"] if out.exists() else []),
    ]  # fmt: skip


def run(blocks: int, steps: int, seeds: list[int]) -> None:
    todo = [
        (b, seed)
        for seed in seeds
        for b in (0, blocks)
        if grid.finished(folder(steps, b, seed)) is None
    ]
    env = grid.bccd_env()
    missing = grid.missing_bases([("", seed) for _, seed in todo])
    if missing:
        print(f"== training the missing bases of seeds {missing}", flush=True)
        if subprocess.run(grid.DOMAINS["bccd"].train_bases(missing), env=env, cwd=REPO).returncode:
            sys.exit(f"training the bases of seeds {missing} failed")
    for b, seed in todo:
        print(f"== {steps} steps, {b} blocks frozen, seed {seed}", flush=True)
        out, base = folder(steps, b, seed), grid.DOMAINS["bccd"].base(seed)
        grid.run_arm(command(steps, b, seed), out, base, env, f"{b} blocks frozen, seed {seed}")


def row(out: Path) -> dict | None:
    """A finished run's scores and seconds per training step, with the code it ran on."""
    record = grid.finished(out)
    if record is None:
        return None
    flat = grid._row(record)
    times = [
        r["step_time"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "step_time" in (r := json.loads(line))
    ]
    flat["seconds_per_train_step"] = statistics.median(times)  # forward, backward, update
    code = json.loads(c.read_text()) if (c := out / grid.CODE_FILE).is_file() else {}
    return {"commit": code.get("commit"), "machine": code.get("machine"), **flat}


def report(blocks: int, steps: int) -> Path:
    runs = {
        b: {int(p.name[4:]): r for p in sorted(ROOT.glob(f"s{steps}_f{b}/seed*")) if (r := row(p))}
        for b in (0, blocks)
    }
    seeds = sorted(set(runs[0]) & set(runs[blocks]))
    if not seeds:
        sys.exit("no seed finished both ways yet: python benchmarks/frozen_blocks.py run")
    diff = {
        key: paired([runs[blocks][s][key] - runs[0][s][key] for s in seeds]) for key in PAIRED_KEYS
    }
    payload = {
        "setup": "shapes-only SFT base -> BCCD, every training image, python -m workbench adapt "
        f"bccd --steps {steps} --forgetting, whole backbone vs --frozen-blocks {blocks}",
        "steps": steps,
        "frozen_blocks": blocks,
        "runs": {f"f{b}": {str(s): r for s, r in rows.items()} for b, rows in runs.items()},
        "seeds": seeds,
        "frozen_minus_whole": diff,
    }
    print(table(runs, blocks, seeds, diff))
    return write_result("frozen_blocks", payload)


def table(runs: dict, blocks: int, seeds: list[int], diff: dict) -> str:
    names = {
        "after/interactive/AP50": "BCCD AP50 interactive",
        "after/cross_image/AP50": "AP50 cross-image",
        "after/interactive/AP": "AP interactive",
        "base_domain_after/interactive/AP": "shapes AP after",
        "seconds_per_train_step": "s per step",
    }
    rows = [
        [
            label,
            str(len(seeds)),
            *(" / ".join(f"{runs[b][s][k]:.3f}" for s in seeds) for k in names),
        ]
        for b, label in ((0, "all blocks train"), (blocks, f"first {blocks} blocks frozen"))
    ]
    rows.append(["frozen − all", str(len(seeds)), *(grid._interval(diff[k]) for k in names)])
    return grid._markdown(["backbone", "seeds", *names.values()], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "report"])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.blocks < 1 or args.steps < 1:
        sys.exit("--blocks and --steps must be >= 1")
    if args.what == "run":
        run(args.blocks, args.steps, args.seeds)
    else:
        print(report(args.blocks, args.steps))


if __name__ == "__main__":
    main()
