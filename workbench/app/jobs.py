"""The app's background fine-tune: one ``adapt`` job at a time, with progress and cancel (plain
Python, no gradio).

A job is ``python -m workbench adapt ...`` in its own process group, so cancelling stops it and
everything it started, and a crash in it cannot take the app down. Its output goes to
``OUT.log`` beside the run folder; progress is read from what the run writes (``adapt.json``'s
plan, the training steps in ``metrics.jsonl``) and the phase from the log's lines. A finished
job's run folder is an ordinary checkpoint the app can load.

The boxes a user draws on several images become the job's data through :class:`TrainingSet`:
each image with its boxes, written as one COCO json with the images beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from workbench.inputs import InputError

REPO = Path(__file__).resolve().parents[2]
MIN_IMAGES = 2  # adapt holds a fifth out: two images is the least that trains and scores


@dataclass
class JobState:
    """What the page shows: ``status`` (idle / running / done / failed / cancelled), the phase
    in words, the training progress in [0, 1], the log's last lines and the run folder."""

    status: str = "idle"
    phase: str = ""
    progress: float = 0.0
    log: str = ""
    out: Path | None = None
    result: dict = field(default_factory=dict)


class AdaptJobs:
    """At most one running ``adapt`` for the whole app (it takes every core)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._out: Path | None = None
        self._cancelled = False

    def start(
        self,
        data: str | Path,
        base: str | Path,
        *,
        objective: str = "sft",
        minutes: float = 10.0,
        name: str = "adapted",
    ) -> Path:
        """Start a job; refused while another runs. Returns the run folder it will write."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                raise InputError(
                    "a fine-tune is already running (one at a time: it takes every core); "
                    "wait for it or cancel it"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out, n = self.root / f"{name}-{objective}-{stamp}", 1
            while out.exists() or out.with_suffix(".log").exists():
                out, n = self.root / f"{name}-{objective}-{stamp}-{n}", n + 1
            log = out.with_suffix(".log").open("w")
            command = [
                sys.executable, "-m", "workbench", "adapt", str(data), "--from", str(base),
                "--objective", objective, "--minutes", f"{minutes:g}", "--out", str(out),
                "--no-progress",
            ]  # fmt: skip
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self._out, self._cancelled = out, False
            return out

    def cancel(self) -> bool:
        """Stop the running job and everything it started; True if one was running."""
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                return False
            self._cancelled = True
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return True

    def state(self) -> JobState:
        """The current (or last) job's state, read from its files."""
        with self._lock:
            process, out, cancelled = self._process, self._out, self._cancelled
        if process is None or out is None:
            return JobState()
        code = process.poll()
        log = out.with_suffix(".log")
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        record = _read_json(out / "adapt.json")
        progress = _training_progress(out, record)
        if code is None:
            status = "running"
        elif cancelled:
            status = "cancelled"
        else:
            status = "done" if code == 0 else "failed"
        return JobState(
            status=status,
            phase=_phase(lines, status),
            progress=1.0 if status == "done" else progress,
            log="\n".join(lines[-12:]),
            out=out,
            result=record if status == "done" else {},
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # not written yet, or being replaced


def _training_progress(out: Path, record: dict) -> float:
    planned = record.get("plan", {}).get("steps")
    metrics = out / "metrics.jsonl"
    if not planned or not metrics.is_file():
        return 0.0
    steps = 0
    for line in metrics.read_text().splitlines():
        try:
            steps = max(steps, json.loads(line).get("step", -1) + 1)
        except ValueError:
            continue  # a line being written
    return min(1.0, steps / planned)


def _phase(lines: list[str], status: str) -> str:
    if status != "running":
        return {"done": "finished", "cancelled": "cancelled", "failed": "failed"}[status] + (
            f": {lines[-1]}" if lines and status == "failed" else ""
        )
    said = "\n".join(lines)
    if "before (the base" not in said:
        return "measuring and scoring the base model" if "plan (" in said else "preparing"
    if "trained " not in said:
        return "training"
    return "scoring the adapted model"


class TrainingSet:
    """Images with the boxes a user drew on them, kept as ``folder/images/*`` plus
    ``folder/annotations.json`` (COCO, ``file_name`` relative to the json)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.json = self.folder / "annotations.json"
        self.items: dict[str, list[tuple[tuple[float, float, float, float], str]]] = {}
        self._stored: dict[str, str] = {}  # an added image's own name -> its stored file name

    def add(self, image: str | Path, boxes) -> str:
        """Add (or replace) ``image`` with ``boxes``: ``[((x0, y0, x1, y1), name), ...]``,
        pixels. Returns the stored file name. Refused: no box, or a box outside the image."""
        image = Path(image)
        with Image.open(image) as im:
            w, h = im.size
        if not boxes:
            raise InputError(f"{image.name}: draw at least one box around an object to learn")
        for (x0, y0, x1, y1), name in boxes:
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise InputError(
                    f"{image.name}: the box {name!r} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is not "
                    f"inside the {w}x{h} image with some area; redraw it"
                )
        stored = self._stored.get(image.name)
        if stored is None:  # a new image: copied in, under a name no other image takes
            stored = f"images/{len(self._stored):04d}_{image.name}"
            (self.folder / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, self.folder / stored)
            self._stored[image.name] = stored
        self.items[stored] = [(tuple(map(float, b)), n or "object") for b, n in boxes]
        self._write()
        return stored

    def remove(self, stored: str) -> None:
        """Leave out an image (its copy stays in the folder, unused)."""
        self.items.pop(stored, None)
        self._write()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for boxes in self.items.values():
            for _, name in boxes:
                out[name] = out.get(name, 0) + 1
        return out

    def ready(self) -> Path:
        """The json to train on, or a user error saying what is missing."""
        if len(self.items) < MIN_IMAGES:
            raise InputError(
                f"add boxes on at least {MIN_IMAGES} images (a fifth is held out to score "
                f"the result); {len(self.items)} so far"
            )
        return self.json

    def _write(self) -> None:
        names = sorted({n for boxes in self.items.values() for _, n in boxes})
        images, annotations = [], []
        for i, (stored, boxes) in enumerate(sorted(self.items.items()), start=1):
            with Image.open(self.folder / stored) as im:
                w, h = im.size
            images.append({"id": i, "file_name": stored, "width": w, "height": h})
            for (x0, y0, x1, y1), name in boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": names.index(name) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": cats}
        self.json.write_text(json.dumps(data))
