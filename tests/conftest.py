"""Shared fixtures. Every test runs offline: no hub, no dataset host (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import runpy
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: no per-example deadline (the first torch call of a process is slow), and the
# same examples on every run so CI failures reproduce.
settings.register_profile("workbench", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("workbench")

# Set before any test module imports transformers, gradio or fiftyone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
# The team's shared folder sits beside the repository (CI clones it there too).
SHARED = REPO.parent / "shared"
BCCD_VOC = SHARED / "data" / "bccd" / "BCCD"


@pytest.fixture(scope="session", autouse=True)
def _private_fiftyone_database(tmp_path_factory):
    """One FiftyOne database (and media folder: the app's "send to FiftyOne" stores its images
    there) for the whole session, so no test reads or writes ~/.fiftyone or ~/fiftyone.

    FiftyOne reads its database directory once, at first import, and starts one mongod for it.
    Any test may import fiftyone (the app's "send to FiftyOne" does), so this runs before the
    first test; the folder lives under pytest's temporary root, which pytest prunes itself
    (deleting it here would pull the database out from under a still-running mongod).
    """
    if "fiftyone" in sys.modules:
        pytest.fail("fiftyone was imported while collecting tests, before its database was set")
    os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp_path_factory.mktemp("fiftyone_db"))
    os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = str(tmp_path_factory.mktemp("fiftyone_media"))


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own dataset cache, so none reads or writes the user's."""
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path_factory.mktemp("data_cache")))


@pytest.fixture(scope="session")
def bccd_voc() -> Path:
    if not (BCCD_VOC / "Annotations").is_dir():
        pytest.fail(
            f"the BCCD VOC folder is missing at {BCCD_VOC}; ../shared must sit beside the repo"
        )
    return BCCD_VOC


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture
def benchmark(tmp_path, monkeypatch):
    """``benchmark("grqo_sweep.py", root=...)``: a benchmark script loaded as a namespace, its
    results written under ``tmp_path/results`` and its module global ``ROOT`` (the run folders)
    set to ``root``."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.setenv("WORKBENCH_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.syspath_prepend(str(folder))

    def load(script: str, root: Path):
        module = runpy.run_path(str(folder / script), run_name=Path(script).stem)
        module["main"].__globals__["ROOT"] = root  # run_path returns a copy of the globals
        namespace = type(Path(script).stem, (), {})()
        namespace.__dict__.update(module)
        namespace.root = root
        return namespace

    return load
