"""The app's two models and its limits (plain Python, no gradio).

A model that is missing or does not load leaves its slot empty with a message saying why and
how to provide one; the app still starts and serves whatever is available. A checkpoint is read
at the input size its run recorded (``Predictor.from_checkpoint``) unless the caller gives one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.predictor import Predictor

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
        max_search_images: images one search of many images takes.
        concurrency: model requests run at once (they share the CPU).
    """

    max_side: int = 2048
    max_classes: int = 16
    max_boxes: int = 64
    max_detections: int = 100
    max_banks: int = 20
    max_search_images: int = 200
    concurrency: int = 1


@dataclass(frozen=True)
class ModelSlot:
    """One of the two compared models: its Predictor, or why there is none."""

    key: str
    predictor: Predictor | None
    source: str
    error: str = ""
    name: str = ""  # shown instead of "SFT" / "GRQO" (an adapted model in that column)

    @property
    def title(self) -> str:
        return self.name or TITLES.get(self.key, self.key)

    @property
    def available(self) -> bool:
        return self.predictor is not None

    @property
    def trained_on(self) -> str | None:
        """What the model's run trained on, from its checkpoint's recorded config (e.g.
        "synthetic shapes (36 base categories) and BCCD blood cells"); None when unrecorded."""
        run = getattr(self.predictor, "run_config", None)
        return None if run is None else describe_training_data(run.data)


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
        default_folder: str | Path | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        device: str = "auto",
        max_detections: int = 100,
    ) -> Models:
        """Load each checkpoint (a None path: ``default_folder/sft`` and ``default_folder/grqo``)
        at the input size its run recorded, unless ``min_size`` / ``max_size`` are given; a
        failure becomes the slot's message, never an exception."""
        slots = {}
        for key, path in (("sft", sft), ("grqo", grqo)):
            default = path is None
            if default and default_folder is None:
                slots[key] = ModelSlot(key, None, "", f"no {TITLES[key]} checkpoint was given")
                continue
            folder = Path(default_folder) / key if default else Path(path)
            sizes = {"min_size": min_size, "max_size": max_size}
            slots[key] = _load_slot(key, folder, default, sizes, device, max_detections)
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


def describe_training_data(data) -> str:
    """A run's training data (its :class:`~workbench.config.DataConfig`) in words: each part of
    ``data.name`` ("shapes", a registered source such as "bccd", or a COCO json path)."""
    from workbench.data.sources import get_source
    from workbench.data.synthetic import shape_categories

    parts = []
    for name in str(data.name).split("+"):
        if name == "shapes":
            split = data.shapes_train_categories
            cats = [c for c in shape_categories() if split in ("all", c["split"])]
            which = "categories" if split == "all" else f"{split} categories"
            parts.append(f"synthetic shapes ({len(cats)} {which}, e.g. '{cats[0]['name']}')")
            continue
        try:
            parts.append(get_source(name).description.split(":")[0])
        except (KeyError, ValueError):
            parts.append(f"'{name}'")
    return " and ".join(parts)


def _load_slot(key, folder: Path, default: bool, sizes: dict, device, k: int) -> ModelSlot:
    title = TITLES[key]
    if not folder.exists():
        what = (
            f"no default {title} model at {folder} (configs/app_default_{key}.yaml trains it)"
            if default
            else f"{folder} does not exist"
        )
        return ModelSlot(key, None, str(folder), f"{what}. {HOW_TO_PROVIDE}")
    try:
        predictor = Predictor.from_checkpoint(folder, device=device, max_detections=k, **sizes)
    except Exception as err:  # any failure to load is reported in the page, never raised
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return ModelSlot(
            key,
            None,
            str(folder),
            f"the {title} checkpoint {folder} did not load ({reason}). {HOW_TO_PROVIDE}",
        )
    return ModelSlot(key, predictor, str(folder))
