"""What every benchmark result records: the machine, the versions, the command and when."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_ENV = "WORKBENCH_BENCH_RESULTS"  # another folder for the results (tests, the quick subset)


def results_dir() -> Path:
    """Where results go: ``$WORKBENCH_BENCH_RESULTS`` when set, else ``benchmarks/results``."""
    folder = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def weights_id(folder: Path) -> str:
    """The sha256 of a model's weights, from its manifest: a model folder's own (as the app's
    defaults are saved) or a run folder's latest checkpoint's."""
    from workbench.checkpoint import find_latest

    latest = folder if (folder / "checkpoint.json").is_file() else find_latest(folder)
    if latest is None:
        raise FileNotFoundError(f"{folder} holds no checkpoint")
    manifest = json.loads((latest / "checkpoint.json").read_text())
    return manifest["files"]["model.safetensors"]["sha256"]


def machine() -> dict:
    cpu, flags = "unknown", []
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    import torch

    return {
        "cpu": cpu,
        # The vector and matrix units speed claims depend on (AVX-512, bf16, AMX, ...).
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict:
    from importlib.metadata import version

    names = ["torch", "transformers", "numpy", "faster-coco-eval", "pycocotools"]
    return {n: version(n) for n in names}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _relative(arg: str) -> str:
    """A path inside the repository as the README's commands write it (from the repo root)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(arg).resolve().relative_to(root)) if Path(arg).is_absolute() else arg
    except ValueError:
        return arg


def write_result(name: str, payload: dict) -> Path:
    """``NAME.json`` in :func:`results_dir` with the payload plus machine, versions and command."""
    record = {
        "benchmark": name,
        "command": " ".join(shlex.quote(a) for a in ["python", *map(_relative, sys.argv)]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        **payload,
    }
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def paired(values: list[float]) -> dict:
    """Mean and 95 % t-interval of paired differences (one per seed)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "values": values}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def shapes_config(image_size: int):
    """Synthetic shapes at any image size: object sizes scale with the image (the default
    20-64 px objects need images of at least 128 px)."""
    from workbench.data.synthetic import ShapesConfig

    return ShapesConfig(
        image_size=image_size,
        object_size=(max(4, image_size // 12), max(4, image_size // 4)),
        supersample=2,
    )
