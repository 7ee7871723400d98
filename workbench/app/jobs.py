"""The app's background fine-tune: one ``adapt`` job at a time, with progress and cancel (plain
Python, no gradio).

A job is ``python -m workbench adapt ...`` in its own process group, so cancelling stops it and
everything it started, and a crash in it cannot take the app down. Its output goes to
``OUT.log`` beside the run folder; progress is read from what the run writes (``adapt.json``'s
plan, or its latest re-plan; the training steps in ``metrics.jsonl``) and the phase
from the log's lines. A finished job's run folder is an ordinary checkpoint the app can load.

The boxes a user draws on several images become the job's data through :class:`TrainingSet`:
each image with its boxes, written as one COCO json with the images beside it.
"""

from __future__ import annotations

import atexit
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

    def __init__(self, root: str | Path, cwd: str | Path | None = None) -> None:
        self.root, self.cwd = Path(root), cwd  # cwd: where the job runs (default: the app's)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._out: Path | None = None
        self._cancelled = False
        atexit.register(self.cancel)  # a job does not outlive the app

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
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self._out, self._cancelled = out, False
            return out

    def data_folder(self) -> Path:
        """A new folder for a job's data, under the jobs' root: it outlives the session that
        started the job (a session's folder goes when its page is closed)."""
        folder = self.root / "data" / str(time.time_ns())
        folder.mkdir(parents=True)
        return folder

    def keep(self, json_path: Path) -> Path:
        """A copy of a training set (its json's folder) in :meth:`data_folder`; the copy's json."""
        copy = self.data_folder() / "set"
        shutil.copytree(json_path.parent, copy)
        return copy / json_path.name

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
    planned = (record.get("replans") or [record.get("plan", {})])[-1].get("steps")
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

    def add(self, image: str | Path | Image.Image, boxes, name: str | None = None) -> str:
        """Add (or replace) an image (a file, or pixels with their ``name``) with ``boxes``:
        ``[((x0, y0, x1, y1), class name), ...]`` in its pixels. Returns the stored file name.
        Refused: no box, or a box outside the image."""
        name = name or Path(image).name
        pixels = image if isinstance(image, Image.Image) else None
        if pixels is None:
            with Image.open(image) as im:
                w, h = im.size
        else:
            w, h = pixels.size
        if not boxes:
            raise InputError(f"{name}: draw at least one box around an object to learn")
        for (x0, y0, x1, y1), label in boxes:
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise InputError(
                    f"{name}: the box {label!r} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is not "
                    f"inside the {w}x{h} image with some area; redraw it"
                )
        stored = self._stored.get(name)
        if stored is None:  # a new image: stored under a name no other image takes
            suffix = ".png" if pixels is not None else Path(name).suffix
            stored = f"images/{len(self._stored):04d}_{Path(name).stem}{suffix}"
            (self.folder / "images").mkdir(parents=True, exist_ok=True)
            self._stored[name] = stored
        if pixels is not None:
            pixels.save(self.folder / stored)
        else:
            shutil.copy(image, self.folder / stored)
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


def add_drawn(drawn: TrainingSet, payload, max_side: int) -> str:
    """Add the annotator's image and boxes (its raw value) to ``drawn``; returns the status.
    A negative class (``-name``) is refused: every box names the object it holds."""
    from workbench.app.inputs import read_annotated, split_label
    from workbench.viz import to_pil

    annotated = read_annotated(payload, "training", max_side)
    if annotated is None:
        raise InputError(
            "upload an image on this tab and draw a box around every object of the classes to "
            "learn, then add it"
        )
    boxes = []
    for box in annotated.boxes:
        name, negative = split_label(box.label)
        if negative:
            raise InputError(
                f"{annotated.file_name}: {box.label!r} is a negative class; a training box "
                "names the object it holds (remove the '-' or 'not ')"
            )
        boxes.append((box.box_xyxy, name))
    drawn.add(to_pil(annotated.image), boxes, name=annotated.file_name)
    counts = ", ".join(f"{n} {c}" for n, c in sorted(drawn.counts().items()))
    n = len(drawn.items)
    return f"{n} image{'' if n == 1 else 's'} in the training set; boxes: {counts}"


def unpack_dataset(archive: str | Path, folder: Path, *, max_bytes: int = 2**30) -> Path:
    """A zip of a labelled dataset (a LabelImg, VOC or YOLO folder, or a COCO json with its
    images) unpacked into ``folder``; returns what ``adapt`` should read: the json when the
    archive holds exactly one at its top, else its single top folder, else ``folder``.
    Refused: not a zip, a member that would land outside ``folder``, more than ``max_bytes``."""
    import zipfile

    archive = Path(archive)
    if not zipfile.is_zipfile(archive):
        raise InputError(f"{archive.name} is not a zip archive; zip the dataset's folder")
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > max_bytes:
            raise InputError(f"{archive.name} unpacks to more than {max_bytes >> 20} MB")
        for m in members:
            if not (root / m.filename).resolve().is_relative_to(root):
                raise InputError(f"{archive.name}: {m.filename!r} points outside the archive")
        z.extractall(root, members)
    top = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    jsons = [p for p in top if p.suffix.lower() == ".json"]
    if len(jsons) == 1:
        return jsons[0]
    dirs = [p for p in top if p.is_dir()]
    return dirs[0] if len(dirs) == 1 and len(top) == 1 else root


def state_text(state: JobState) -> str:
    """The job's state for the page: status, phase, a progress bar while training, and the AP
    before and after when done."""
    if state.status == "idle":
        return "No fine-tune has run yet."
    lines = [f"**{state.status}** · {state.phase}"]
    if state.status == "running":
        filled = round(20 * state.progress)
        lines.append(f"training `{'█' * filled}{'░' * (20 - filled)}` {state.progress:.0%}")
    for when in ("before", "after"):
        scores = state.result.get(when, {})
        if scores:
            parts = [f"{p} AP50 {s['AP50']:.3f}" for p, s in scores.items()]
            lines.append(f"{when}: " + ", ".join(parts))
    if state.out is not None:
        lines.append(f"run folder: `{state.out}`")
    return "\n\n".join(lines)
