"""A benchmark of this checkout against an earlier commit's code, interleaved on one machine.

    python benchmarks/before_after.py step_time --baseline d8cafb8 --rounds 3 -- --sizes tiny small
    python benchmarks/before_after.py predictor_latency --baseline d8cafb8 -- --sizes small

The earlier commit is checked out into a temporary git worktree; its copy of the benchmark script
then runs on its own code, alternating with this checkout's copy (before, after, before, after,
...), so whatever else loads the machine hits both alike. Each run writes its usual JSON into a
private folder; this script collects them all and writes
``benchmarks/results/<benchmark>_before_after.json``: every round's result of both, and the
ratio after / before of the median over rounds of each number the two have in common (for a time,
below 1 is faster), and of the minimum over rounds (other work on the machine only ever slows a
run down, so the minima are the least disturbed pair).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ENV, write_result

REPO = Path(__file__).resolve().parents[1]


def worktree(commit: str, into: Path) -> Path:
    """A checkout of ``commit`` at ``into`` (a git worktree sharing this repository)."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), commit],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return into


def run_once(tree: Path, benchmark: str, args: list[str], out: Path) -> dict:
    """``tree``'s copy of ``benchmarks/<benchmark>.py`` on ``tree``'s code; its JSON."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), RESULTS_ENV: str(out)}
    probe = "import workbench, sys; sys.stdout.write(workbench.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tree, check=True, capture_output=True, text=True
    ).stdout
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the {tree} run would import workbench from {found}; check PYTHONPATH")
    subprocess.run(
        [sys.executable, str(tree / "benchmarks" / f"{benchmark}.py"), *args],
        env=env,
        cwd=tree,
        check=True,
    )
    return json.loads((out / f"{benchmark}.json").read_text())


def numbers(record, prefix: str = "") -> dict[str, float]:
    """Every number in a result, by its dotted path (machine and version details left out)."""
    skip = {"machine", "versions", "date", "commit", "command", "benchmark"}
    if isinstance(record, dict):
        out = {}
        for key, value in record.items():
            if not (prefix == "" and key in skip):
                out.update(numbers(value, f"{prefix}{key}."))
        return out
    if isinstance(record, int | float) and not isinstance(record, bool):
        return {prefix.rstrip("."): float(record)}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="arguments after -- go to the benchmark"
    )
    parser.add_argument("benchmark", help="a script of benchmarks/, without .py")
    parser.add_argument("--baseline", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    opts.args = argv[split + 1 :]  # the benchmark's own arguments
    scratch = Path(tempfile.mkdtemp(prefix="before_after_"))
    base = worktree(opts.baseline, scratch / "before")
    try:
        rounds = []
        for r in range(opts.rounds):
            before = run_once(base, opts.benchmark, opts.args, scratch / f"out_before_{r}")
            after = run_once(REPO, opts.benchmark, opts.args, scratch / f"out_after_{r}")
            rounds.append({"before": before, "after": after})
        before_n = [numbers(r["before"]) for r in rounds]
        after_n = [numbers(r["after"]) for r in rounds]
        common = sorted(set(before_n[0]) & set(after_n[0]))
        ratios = {}
        for key in common:
            b = statistics.median(n[key] for n in before_n)
            a = statistics.median(n[key] for n in after_n)
            b_min, a_min = min(n[key] for n in before_n), min(n[key] for n in after_n)
            if b and b_min:
                ratios[key] = {
                    "before": b,
                    "after": a,
                    "after_over_before": a / b,
                    "after_over_before_of_minima": a_min / b_min,
                }
        path = write_result(
            f"{opts.benchmark}_before_after",
            {
                "baseline": opts.baseline,
                "benchmark_args": opts.args,
                "rounds": opts.rounds,
                "ratios": ratios,
                "runs": rounds,
            },
        )
        print(path)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True
        )
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
