"""A prompts file: visual prompts written by hand, for ``workbench predict FOLDER --prompts``.

A json list with one entry per class; each exemplar box lies on a reference image whose path is
relative to the json file (or absolute)::

    [
      {"name": "cat", "exemplars": [{"image": "refs/a.jpg", "box": [10, 20, 60, 80]},
                                    {"image": "refs/b.jpg", "box": [5, 5, 40, 50]}]},
      {"name": "dog", "exemplars": [{"image": "refs/a.jpg", "box": [100, 30, 180, 120]}]},
      {"name": "cushion", "negative": true,
       "exemplars": [{"image": "refs/a.jpg", "box": [0, 90, 50, 130]}]}
    ]

``box`` is ``[x0, y0, x1, y1]`` in pixels of the image as displayed (EXIF orientation applied, as
the app and ``predict --box`` take it). ``negative: true`` marks a "not this kind" class: it
competes for queries but is never reported. Every malformed case is an :class:`InputError`
naming the file, the entry and the fix; nothing is read from an image until the whole file is
valid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from workbench.inputs import InputError
from workbench.types import Exemplar, VisualPrompt

_ENTRY_KEYS = {"name", "exemplars", "negative"}
_EXEMPLAR_KEYS = {"image", "box"}
EXAMPLE = '[{"name": "cat", "exemplars": [{"image": "ref.jpg", "box": [x0, y0, x1, y1]}]}]'


def read_prompt_file(path: str | Path) -> tuple[list[VisualPrompt], dict[str, Path]]:
    """The prompts of a prompts file and the reference images they use.

    Returns:
        ``(prompts, images)``: each exemplar's ``image_id`` is a key of ``images``, the path of
        its reference image (resolved against the json's folder).
    """
    path = Path(path)
    entries = _load(path)
    prompts, images, seen = [], {}, {}
    for i, entry in enumerate(entries):
        where = f"{path}, entry {i}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} is {type(entry).__name__}, not an object; write {EXAMPLE}")
        _no_unknown_keys(entry, _ENTRY_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f'{where} needs a "name": a non-empty string (the class to find)')
        where = f"{path}, entry {i} ({name!r})"
        if name in seen:
            raise InputError(
                f"{where}: the name is also entry {seen[name]}'s; put all of a class's exemplars "
                "in one entry"
            )
        seen[name] = i
        negative = entry.get("negative", False)
        if not isinstance(negative, bool):
            raise InputError(f'{where}: "negative" must be true or false, got {negative!r}')
        exemplars = entry.get("exemplars")
        if not isinstance(exemplars, list) or not exemplars:
            raise InputError(
                f'{where} needs "exemplars": a non-empty list of {{"image": PATH, "box": '
                "[x0, y0, x1, y1]}"
            )
        boxes = [
            _exemplar(ex, path.parent, f"{where}, exemplar {j}") for j, ex in enumerate(exemplars)
        ]
        for key, _ in boxes:
            images.setdefault(key, path.parent / key)
        exemplar_list = tuple(Exemplar(box, key) for key, box in boxes)
        prompts.append(VisualPrompt(name, exemplar_list, prompt_id=i, negative=negative))
    if all(p.negative for p in prompts):
        raise InputError(f"{path}: every class is negative; add at least one class to find")
    return prompts, images


def _load(path: Path) -> list:
    if not path.is_file():
        raise InputError(f"prompts file {path} not found; check --prompts")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path} is not valid json (line {err.lineno}, column {err.colno}: {err.msg}); "
            f"a prompts file looks like {EXAMPLE}"
        ) from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text; a prompts file is json") from err
    if not isinstance(data, list):
        raise InputError(
            f"{path} holds a json {type(data).__name__}; a prompts file is a list of classes: "
            f"{EXAMPLE}"
        )
    if not data:
        raise InputError(f"{path} holds no prompts; add at least one class: {EXAMPLE}")
    return data


def _no_unknown_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


def _exemplar(ex, folder: Path, where: str) -> tuple[str, tuple[float, float, float, float]]:
    """``(image key, box)`` of one exemplar; the key is the path as written in the file."""
    if not isinstance(ex, dict):
        raise InputError(f'{where} must be an object {{"image": PATH, "box": [x0, y0, x1, y1]}}')
    _no_unknown_keys(ex, _EXEMPLAR_KEYS, where)
    image = ex.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(f'{where} needs "image": the path of the image the box lies on')
    if not (folder / image).is_file():
        raise InputError(
            f"{where}: image {folder / image} not found; paths are relative to the prompts file"
        )
    box = ex.get("box")
    numbers = isinstance(box, list) and len(box) == 4
    numbers = numbers and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    if not numbers or not all(math.isfinite(v) for v in box):
        raise InputError(
            f'{where}: "box" must be [x0, y0, x1, y1], four numbers (pixels); got {box!r}'
        )
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(
            f'{where}: "box" {box} has no area; write [left, top, right, bottom] with '
            "right > left and bottom > top"
        )
    return image, (x0, y0, x1, y1)
