"""The app's bundled examples: images with ground truth and suggested prompt boxes (plain
Python, no gradio). The folder is the caller's (``app.py`` passes the repository's ``examples/``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workbench.boxes import box_area
from workbench.data.coco import CocoDetection
from workbench.viz import color_for


@dataclass(frozen=True)
class Example:
    """A bundled image: its file, the COCO json holding its boxes, and suggested prompt boxes
    (one box of each of its most frequent classes, labelled with the class name)."""

    key: str
    image_path: Path
    annotations: Path
    classes: tuple[str, ...]
    prompt_boxes: tuple[dict, ...]


def scan_examples(folder: str | Path, prompt_classes: int = 2) -> dict:
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
