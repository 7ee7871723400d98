"""How long the FiftyOne export of a split takes with two models, end to end.

    python benchmarks/fiftyone_export.py [--split val] [--max-images N] [--fiftyone-map]

Runs ``python -m workbench fiftyone export --source bccd --split SPLIT --model sft=models/sft
--model grqo=models/grqo --reference sft`` (every default: display threshold, merge, top-K cap,
all queries, evaluation and views) against a private FiftyOne database in a temporary folder,
and writes benchmarks/results/fiftyone_export.json: seconds, images, labels per field, mAP and
view sizes. BCCD is read from ``$WORKBENCH_BCCD`` or ``../shared/data/bccd/BCCD``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--fiftyone-map", action="store_true", help="also FiftyOne's own mAP")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "FIFTYONE_DATABASE_DIR": str(Path(tmp) / "db"),
            "FIFTYONE_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
            "WORKBENCH_DATA": str(Path(tmp) / "data"),
        }
        env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
        env.setdefault("WORKBENCH_BCCD", str(BCCD))
        command = [
            sys.executable,
            "-m",
            "workbench",
            "fiftyone",
            "export",
            "--source",
            "bccd",
            "--split",
            args.split,
            "--model",
            f"sft={REPO / 'models' / 'sft'}",
            "--model",
            f"grqo={REPO / 'models' / 'grqo'}",
            "--reference",
            "sft",
            "--name",
            "benchmark-export",
        ]
        command += ["--max-images", str(args.max_images)] if args.max_images else []
        command += ["--fiftyone-map"] if args.fiftyone_map else []
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    lines = proc.stdout.splitlines()
    summary = json.loads("\n".join(lines[max(i for i, s in enumerate(lines) if s == "{") :]))
    payload = {
        "export_command": " ".join(command[1:]).replace(str(REPO) + "/", ""),
        "seconds": round(seconds, 1),
        "images": summary["samples"],
        "seconds_per_image": round(seconds / max(summary["samples"], 1), 2),
        "labels": summary["labels"],
        "evaluations": summary["evaluations"],
        "views": summary["views"],
        "empty_views": summary["empty_views"],
    }
    path = write_result("fiftyone_export", payload)
    print(f"{summary['samples']} images in {seconds:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
