"""Files shipped by installed data-only packages, found by path without importing anything.

The offline weights (the ImageNet MobileNetV2, the MiniLM text encoder) come as pip packages
installed with ``--no-deps`` that hold only files; the model reads them from where the package
put them, and ``python -m workbench.doctor`` checks that they are there.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path


def package_file(dist: str, relative: str) -> Path:
    """The absolute path of a file shipped by installed distribution ``dist`` (no import)."""
    try:
        path = Path(md.distribution(dist).locate_file(relative))
    except md.PackageNotFoundError as err:
        raise FileNotFoundError(f"package {dist} is not installed; run `make setup`") from err
    if not path.exists():
        raise FileNotFoundError(
            f"{dist} does not contain {relative}; reinstall it with `make setup`"
        )
    return path
