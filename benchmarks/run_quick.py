"""The quick benchmark subset (``make bench``): under 15 minutes on two idle cores.

    python benchmarks/run_quick.py [--out-dir benchmarks/results/quick] [--only NAME ...] \
        [--dry-run]

Each benchmark runs in its own process with the small settings below and writes its JSON (and
plots) into ``--out-dir``, so the full results in benchmarks/results stay as they are. A failing
benchmark does not stop the others; the script exits non-zero at the end if any failed.
``run_quick.json`` records each command with its wall and CPU time and exit code.

The quick subset, and the full set it stands for (each script's defaults, writing to
benchmarks/results):

- ``step_time``: tiny, 4 steps. Full: ``step_time.py`` (tiny and small, 12 steps).
- ``predictor_latency``: tiny and small, 5 repeats, 512 px. Full: ``predictor_latency.py``
  (tiny, small and T, 10 repeats, 512 px).
- ``coco_eval_speed``: 250 images x 20 boxes, 2 repeats. Full: ``coco_eval_speed.py``
  (500 images x 20 boxes, 3 repeats).
- ``scale``: tiny at 256 px, queries 50 / 300, prompts 1 / 10 / 80, batch 1 / 4 / 8, 2 repeats.
  Full: ``scale.py`` (small at 256 px; queries 100-900, prompts 1-80, batch 1-16 in 16 points,
  3 repeats), and ``scale.py --objective grqo``.
- ``deformable_attention``: as the full run (one encoder-sized call, 7 repeats).

Not in the quick subset (minutes to hours): ``train_run.py CONFIG`` (a full training run and its
evaluation) and ``app_load.py`` (16 concurrent app users for a minute).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ENV, write_result

HERE = Path(__file__).resolve().parent

QUICK = {  # benchmark -> its options
    "step_time": "--sizes tiny --steps 4",
    "predictor_latency": "--sizes tiny small --repeats 5",
    "coco_eval_speed": "--images 250 --repeats 2",
    "scale": "--size tiny --queries 50 300 --prompts 1 10 80 --batch-sizes 1 4 8 --repeats 2",
    "deformable_attention": "",
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "quick")
    parser.add_argument("--only", nargs="+", choices=list(QUICK), default=list(QUICK))
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()
    env = {**os.environ, RESULTS_ENV: str(args.out_dir.resolve())}
    runs = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *QUICK[name].split()]
        print("$", " ".join([Path(cmd[0]).name, *cmd[1:]]), flush=True)
        if args.dry_run:
            continue
        cpu, start = children_cpu_seconds(), time.perf_counter()
        code = subprocess.run(cmd, env=env, check=False).returncode
        runs.append(
            {
                "benchmark": name,
                "args": QUICK[name],
                "returncode": code,
                "wall_s": time.perf_counter() - start,
                "cpu_s": children_cpu_seconds() - cpu,
            }
        )
        print(f"  {name}: {runs[-1]['wall_s']:.0f} s, exit code {code}", flush=True)
    if args.dry_run:
        return
    total = sum(r["wall_s"] for r in runs)
    print(f"quick subset: {total / 60:.1f} min; results in {args.out_dir}")
    os.environ[RESULTS_ENV] = env[RESULTS_ENV]  # the summary goes beside the results
    print(write_result("run_quick", {"total_wall_s": total, "runs": runs}))
    failed = [r["benchmark"] for r in runs if r["returncode"] != 0]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
