"""The app's two models, its limits and its bundled examples (plain Python, no gradio).

A model that is missing or does not load leaves its slot empty with a message saying why and
how to provide one; the app still starts and serves whatever is available.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workbench.boxes import box_area
from workbench.data.coco import CocoDetection
from workbench.predictor import Predictor
from workbench.viz import color_for

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINTS = {"sft": REPO / "models" / "sft", "grqo": REPO / "models" / "grqo"}
EXAMPLES_DIR = REPO / "examples"
TITLES = {"sft": "SFT", "grqo": "GRQO"}
HOW_TO_PROVIDE = (
    "Provide checkpoint directories (from `python -m workbench train ...`, or saved with "
    "`workbench.model.build.save_pretrained`): `python app.py --sft CKPT --grqo CKPT`"
)


@dataclass(frozen=True)
class Settings:
    """Limits that keep one request from holding the CPU for long, and display defaults.

    Attributes:
        max_side: uploads with a longer side are downscaled to it (pixels).
        max_classes, max_boxes: prompt classes / boxes per request.
        max_detections: top-K detections per model and image.
        max_banks: saved prompt banks per session.
        concurrency: model requests run at once (they share the CPU).
    """

    max_side: int = 2048
    max_classes: int = 16
    max_boxes: int = 64
    max_detections: int = 100
    max_banks: int = 20
    concurrency: int = 1


@dataclass(frozen=True)
class ModelSlot:
    """One of the two compared models: its Predictor, or why there is none."""

    key: str
    predictor: Predictor | None
    source: str
    error: str = ""

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key)

    @property
    def available(self) -> bool:
        return self.predictor is not None


@dataclass(frozen=True)
class Models:
    """The SFT and GRQO slots, in that order."""

    sft: ModelSlot
    grqo: ModelSlot

    @classmethod
    def from_predictors(cls, sft: Predictor | None = None, grqo: Predictor | None = None) -> Models:
        """Slots over Predictors built elsewhere (tests, notebooks); None leaves a slot empty."""
        slots = {}
        for key, predictor in (("sft", sft), ("grqo", grqo)):
            error = "" if predictor is not None else f"no {TITLES[key]} model was given"
            slots[key] = ModelSlot(key, predictor, "in memory", error)
        return cls(**slots)

    @classmethod
    def from_checkpoints(
        cls,
        sft: str | Path | None = None,
        grqo: str | Path | None = None,
        *,
        min_size: int = 256,
        max_size: int = 512,
        device: str = "auto",
        max_detections: int = 100,
    ) -> Models:
        """Load each checkpoint (default: ``models/sft``, ``models/grqo``); a failure becomes the
        slot's message, never an exception."""
        paths = {"sft": sft, "grqo": grqo}
        slots = {}
        for key, path in paths.items():
            default = path is None
            folder = Path(DEFAULT_CHECKPOINTS[key] if default else path)
            slots[key] = _load_slot(
                key, folder, default, min_size, max_size, device, max_detections
            )
        return cls(**slots)

    @property
    def slots(self) -> tuple[ModelSlot, ModelSlot]:
        return self.sft, self.grqo

    def get(self, key: str) -> ModelSlot:
        if key not in TITLES:
            raise ValueError(f"unknown model {key!r}; choose 'sft' or 'grqo'")
        return getattr(self, key)

    def available(self) -> list[ModelSlot]:
        return [s for s in self.slots if s.available]

    def problems(self) -> list[str]:
        """One line per empty slot, each saying how to fix it."""
        return [f"{s.title}: {s.error}" for s in self.slots if not s.available]


def _load_slot(key, folder: Path, default: bool, min_size, max_size, device, k) -> ModelSlot:
    title = TITLES[key]
    if not folder.exists():
        what = (
            f"no default {title} model at {folder} (configs/app_default_{key}.yaml trains it)"
            if default
            else f"{folder} does not exist"
        )
        return ModelSlot(key, None, str(folder), f"{what}. {HOW_TO_PROVIDE}")
    try:
        predictor = Predictor.from_checkpoint(
            folder, device=device, min_size=min_size, max_size=max_size, max_detections=k
        )
    except Exception as err:  # any failure to load is reported in the page, never raised
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return ModelSlot(
            key,
            None,
            str(folder),
            f"the {title} checkpoint {folder} did not load ({reason}). {HOW_TO_PROVIDE}",
        )
    return ModelSlot(key, predictor, str(folder))


# --- bundled examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A bundled image: its file, the COCO json holding its boxes, and suggested prompt boxes
    (one box of each of its most frequent classes, labelled with the class name)."""

    key: str
    image_path: Path
    annotations: Path
    classes: tuple[str, ...]
    prompt_boxes: tuple[dict, ...]


def scan_examples(folder: str | Path = EXAMPLES_DIR, prompt_classes: int = 2) -> dict:
    """``{"set/file.png": Example}`` for every image of every ``folder/*/annotations.json``."""
    examples = {}
    for json_path in sorted(Path(folder).glob("*/annotations.json")):
        dataset = CocoDetection(json_path)
        names = {c.label: c.name for c in dataset.categories}
        for index in range(len(dataset)):
            target = dataset.target(index)
            boxes = target.boxes_xyxy(target.orig_size)
            areas = box_area(boxes)
            labels = target.labels.tolist()
            counts = Counter(labels)
            frequent = sorted(counts, key=lambda lab: (-counts[lab], names[lab]))
            prompts = []
            for k, lab in enumerate(frequent[:prompt_classes]):
                rows = [i for i, x in enumerate(labels) if x == lab]
                best = max(rows, key=lambda i: float(areas[i]))
                x0, y0, x1, y1 = (round(float(v)) for v in boxes[best])
                prompts.append(
                    {
                        "xmin": x0,
                        "ymin": y0,
                        "xmax": x1,
                        "ymax": y1,
                        "label": names[lab],
                        "color": color_for(k),
                    }
                )
            image_path = dataset.image_path(index)
            key = f"{json_path.parent.name}/{image_path.name}"
            classes = tuple(sorted({names[lab] for lab in labels}))
            examples[key] = Example(key, image_path, json_path, classes, tuple(prompts))
    return examples
