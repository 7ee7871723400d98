"""One user's state in the app: a :class:`Session` (its private folder, saved prompt banks and
last comparison). The models are shared and read-only; everything per user lives here, and the
app keeps it in ``gr.State``. Plain Python, no gradio.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU, shown_detections
from workbench.prompt_bank import PromptBank
from workbench.types import Detections, QueryRecord
from workbench.viz import NEGATIVE_COLOR, palette_color

_ROOT: list[Path] = []  # this process's folder of session folders, removed at exit
_ROOT_LOCK = threading.Lock()


def _sessions_root() -> Path:
    with _ROOT_LOCK:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="workbench-app-")))
            atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
        return _ROOT[0]


class Session:
    """One user's state: a private temp folder (banks, exports; made on first use), saved banks
    by name (one file per model: an embedding belongs to the weights that made it), the last
    comparison, and a colour per class name."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self.banks: dict[str, dict[str, Path]] = {}
        self.comparison: Comparison | None = None
        self.queries: InspectedQueries | None = None  # the last inspected queries
        self._colors: dict[str, tuple[int, int, int]] = {}
        self.training = None  # the "Teach a new object" tab's jobs.TrainingSet
        self.models = None  # the app's Models with an adapted model in a column, once chosen

    def color(self, name: str, negative: bool = False) -> tuple[int, int, int]:
        """Class ``name``'s colour in this session, the same on prompt boxes, results and
        tables: the next unused palette colour the first time a name is seen; grey for negative
        classes."""
        if negative:
            return NEGATIVE_COLOR
        if name not in self._colors:
            self._colors[name] = palette_color(len(self._colors))
        return self._colors[name]

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="session-", dir=_sessions_root()))
        return self._folder

    def bank(self, name: str, model: str) -> PromptBank:
        if name not in self.banks:
            raise InputError(f"no prompt bank named {name!r} in this session; save one first")
        if model not in self.banks[name]:
            raise InputError(f"prompt bank {name!r} has no embeddings for the {model} model")
        return PromptBank.load(self.banks[name][model])

    def close(self) -> None:
        """Remove the session's files (gradio calls this when it drops the state)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def close_session(session: Session | None) -> None:
    if isinstance(session, Session):
        session.close()


@dataclass
class Comparison:
    """The last comparison of a session: every raw detection (top-K, above 0), to re-threshold
    and re-merge without running a model, the searched image as 8-bit RGB (a quarter of the float
    tensor's memory), and the seconds each model took.

    ``merge_iou`` is the IoU above which shown boxes of one class merge; None shows every raw
    box (see :func:`workbench.postprocess.shown_detections`)."""

    image: Image.Image
    file_name: str
    names: tuple[str, ...]
    negative: tuple[bool, ...]
    num_exemplars: tuple[int, ...]
    detections: dict[str, Detections]
    sources: dict[str, str]
    score_threshold: float
    merge_iou: float | None = MERGE_IOU
    seconds: dict[str, float] = field(default_factory=dict)

    def shown(self) -> dict[str, Detections]:
        """Each model's detections as shown: thresholded, duplicates merged."""
        return {
            k: shown_detections(d, self.score_threshold, self.merge_iou)
            for k, d in self.detections.items()
        }


@dataclass
class InspectedQueries:
    """The last inspected queries of a session, to show their table again (other columns)
    without running the model: every query's record, and the class name of each ground-truth box
    (``QueryRecord.matched_gt`` indexes them; empty without ground truth)."""

    records: list[QueryRecord]
    gt_names: list[str]
