"""The Gradio app: draw visual prompts, compare SFT and GRQO, inspect every query.

The app needs the detector (``workbench.model``), the Predictor and trained default models; until
this checkout has them, ``python app.py`` says what is missing and what already works.
"""

from __future__ import annotations

import importlib.util
import sys

NEEDED = {
    "workbench.model": "the visual-prompt detector",
    "workbench.predictor": "the inference path (Predictor)",
}


def missing_parts() -> list[str]:
    """The modules the app needs that this checkout does not have yet."""
    return [
        f"{name} ({what})"
        for name, what in NEEDED.items()
        if importlib.util.find_spec(name) is None
    ]


def main() -> int:
    print("The Gradio app cannot start in this checkout; it lacks:", file=sys.stderr)
    for item in missing_parts() or ["the app itself (build_demo)"]:
        print(f"  - {item}", file=sys.stderr)
    print(
        "Available now: the data layer, e.g.\n"
        "  .venv/bin/python -m workbench data make-shapes --out runs/shapes --images 200\n"
        "  .venv/bin/python -m workbench data show runs/shapes/annotations.json --out s.png",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
