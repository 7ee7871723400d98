"""Where a YOLO dataset keeps its class names, images, splits and label files.

Class names, the first found of:

- ``data.yaml`` or ``dataset.yaml`` in the folder, else its only .yaml file (``coco8.yaml``), or
  the yaml itself passed as the folder, as ultralytics and Roboflow write it: ``names`` a list
  or an ``{id: name}`` mapping (``nc``, when given, must agree); ``train`` / ``val`` / ``test``
  each a folder of images (searched recursively), a .txt list of image paths, or a list of
  those. They are relative to ``path`` (itself relative to the yaml's folder), else to the
  yaml's folder; a leading ``../`` that leads nowhere is also tried without it (Roboflow's
  exports say ``../train/images``). List lines are relative to the list's folder, else to those
  folders. A yaml without splits: images as below.
- ``classes.txt`` (one name a line, class 0 first; LabelImg's YOLO mode), in the folder or in its
  ``labels/``. Images are those under ``images/`` (recursively), else directly in the folder;
  an ``images/{train,val,valid,validation,test}/`` sub-folder (any case) makes the split of the
  same name in lower case.

An image's label file (ultralytics' rule, then LabelImg's): its path with the last ``images``
folder replaced by its sibling ``labels`` folder and the suffix by ``.txt``, else ``STEM.txt``
beside the image. Folder and file names match in any case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from workbench.data.dataset import DatasetError
from workbench.data.user_folders import (
    IMAGE_SUFFIXES,
    FolderFiles,
    child_folder,
    files_below,
    files_with_suffix,
    is_image,
)

YAML_NAMES = ("data.yaml", "dataset.yaml")
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
YAML_SPLITS = ("train", "val", "test")


def _absolute(path: Path) -> Path:
    """``path`` absolute with ``..`` and ``.`` removed, links kept (as the user named it)."""
    return Path(os.path.abspath(path))


@dataclass
class YoloLayout:
    """What :func:`find_yolo_layout` found.

    Attributes:
        root: the dataset's folder, absolute (the yaml's, when a yaml was passed); messages
            name files relative to it.
        names: class id -> name.
        names_file: the yaml or classes.txt the names come from.
        images: every image, absolute, sorted, each once.
        splits: split name -> its images (an image may be in several).
        label_folders: ``labels/`` folders mirroring scanned image folders: every .txt in them
            (recursively, but classes.txt) is a label file that must have an image.
    """

    root: Path
    names: dict[int, str]
    names_file: Path
    images: list[Path]
    splits: dict[str, set[Path]] = field(default_factory=dict)
    label_folders: list[Path] = field(default_factory=list)


class LabelFinder:
    """An image's label file; folder listings are read once (datasets hold 10k+ images)."""

    def __init__(self) -> None:
        self._listings: dict[Path, FolderFiles] = {}
        self._labels: dict[Path, Path | None] = {}

    def listing(self, folder: Path) -> FolderFiles:
        if folder not in self._listings:
            self._listings[folder] = FolderFiles(folder)
        return self._listings[folder]

    def mirrored(self, path: Path, existing: bool = True) -> Path | None:
        """``path`` with its last ``images`` folder (any case) replaced by the ``labels`` folder
        beside it, or None when there is no such pair (``existing=False``: when ``path`` is in
        no ``images`` folder; a missing ``labels`` folder is then named ``labels``)."""
        parts = path.parts
        for i in range(len(parts) - 1, 0, -1):
            if parts[i].lower() == "images":
                parent = Path(*parts[:i])
                if parent not in self._labels:
                    self._labels[parent] = child_folder(parent, ("labels",))
                labels = self._labels[parent] or (None if existing else parent / "labels")
                return None if labels is None else labels.joinpath(*parts[i + 1 :])
        return None

    def label_for(self, image: Path) -> Path | None:
        """The label file of ``image``: its ``labels/`` twin, else ``STEM.txt`` beside it."""
        twin = self.mirrored(image)
        if twin is not None:
            found = self.listing(twin.parent).find(image.stem + ".txt")
            if found is not None:
                return found
        return self.listing(image.parent).find(image.stem + ".txt")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid YAML ({err}); fix the file") from err
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: the top level is a {type(data).__name__}; a YOLO data.yaml maps names: "
            "(the class names) and train: / val: (image folders)"
        )
    return data


def checked_names(items: list[tuple[int, object]], source: Path) -> dict[int, str]:
    """``{id: name}``, refusing no classes, empty names and a name given twice."""
    if not items:
        raise DatasetError(f"{source}: no class names; list them, class 0 first")
    names: dict[int, str] = {}
    for class_id, value in items:
        name = "" if value is None else str(value).strip()
        if not name:
            raise DatasetError(f"{source}: class {class_id} has no name; name it")
        names[class_id] = name
    seen: dict[str, int] = {}
    for class_id, name in names.items():
        if name in seen:
            raise DatasetError(
                f"{source}: classes {seen[name]} and {class_id} are both called {name!r}; give "
                "each class its own name (and relabel if they are one class)"
            )
        seen[name] = class_id
    return names


def _yaml_names(data: dict, path: Path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        items = list(enumerate(names))
    elif isinstance(names, dict):
        items = []
        for key, value in names.items():
            digits = str(key).strip() if not isinstance(key, bool) else ""
            if not digits.isdigit():
                raise DatasetError(
                    f"{path}: names has the key {key!r}; its keys are class ids 0, 1, 2 ..."
                )
            items.append((int(digits), value))
    else:
        raise DatasetError(
            f"{path}: no names: list; add the class names, e.g. names: [cat, dog] or "
            "names: {0: cat, 1: dog}"
        )
    nc = data.get("nc")
    if nc is not None and nc != len(items):
        raise DatasetError(
            f"{path}: nc is {nc} but names lists {len(items)} classes; make them agree, or "
            "delete nc"
        )
    return checked_names(sorted(items, key=lambda kv: kv[0]), path)


def _txt_names(path: Path) -> dict[int, str]:
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError(
                f"{path}, line {n}: empty; class ids count the lines, so name that class or "
                "delete the line (and renumber the labels after it)"
            )
    return checked_names(list(enumerate(lines)), path)


def _resolve(entry: str, bases: list[Path]) -> Path | None:
    """``entry`` as an existing path: absolute, or under one of ``bases`` (a leading ``../``
    also tried without it, as ultralytics does for Roboflow's exports)."""
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    tries = [entry, entry[3:]] if entry.startswith("../") else [entry]
    for base in bases:
        for tried in tries:
            if (base / tried).exists():
                return base / tried
    return None


def _listed_images(listing: Path, bases: list[Path]) -> list[Path]:
    """The images a .txt list names, one a line; a missing one is refused."""
    images = []
    text = listing.read_text(encoding="utf-8-sig", errors="replace")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        found = _resolve(line.strip(), [listing.parent, *bases])
        if found is None or not found.is_file():
            raise DatasetError(
                f"{listing}, line {n}: the image {line.strip()} does not exist (looked under "
                f"{listing.parent} and {bases[0]}); fix the line or restore the image"
            )
        images.append(found)
    return images


def _split_images(
    key: str, entry: object, bases: list[Path], yaml_path: Path, layout: YoloLayout
) -> set[Path]:
    """The images of one yaml split; scanned folders' ``labels/`` twins go to ``layout``."""
    found: set[Path] = set()
    for item in entry if isinstance(entry, list) else [entry]:
        path = _resolve(str(item), bases) if isinstance(item, str) and item.strip() else None
        if path is not None and path.is_dir():
            found |= {_absolute(p) for p in files_with_suffix(path, IMAGE_SUFFIXES, True)}
            twin = LabelFinder().mirrored(_absolute(path))
            if twin is not None and twin.is_dir():
                layout.label_folders.append(twin)
        elif path is not None and path.suffix.lower() == ".txt":
            found |= {_absolute(p) for p in _listed_images(path, bases)}
        elif path is not None and is_image(path):
            found.add(_absolute(path))
        else:
            where = " or ".join(str(b) for b in bases)
            raise DatasetError(
                f"{yaml_path}: {key}: {item!r} is no folder of images or .txt list under {where}; "
                "fix the path (relative to path:, or to the yaml's folder)"
            )
    return found


def _from_yaml(yaml_path: Path) -> YoloLayout:
    data = _read_yaml(yaml_path)
    root = _absolute(yaml_path.parent)
    layout = YoloLayout(root, _yaml_names(data, yaml_path), yaml_path, [])
    bases = [root]
    if isinstance(data.get("path"), str) and data["path"].strip():
        path = _absolute(root / Path(data["path"]).expanduser())
        bases = [path, root] if path.is_dir() and path != root else bases
    for key in YAML_SPLITS:
        if data.get(key):
            layout.splits[key] = _split_images(key, data[key], bases, yaml_path, layout)
    if not layout.splits:
        return _discover(bases[0], layout)
    layout.images = sorted(set().union(*layout.splits.values()))
    return layout


def _discover(root: Path, layout: YoloLayout) -> YoloLayout:
    """Images under ``images/`` (a split per known sub-folder), else directly in ``root``."""
    image_dir = child_folder(root, ("images",))
    images = files_with_suffix(image_dir, IMAGE_SUFFIXES, True) if image_dir is not None else []
    if images:
        labels = child_folder(root, ("labels",))
        if labels is not None:
            layout.label_folders.append(_absolute(labels))
        for image in images:
            split = image.relative_to(image_dir).parts[0].lower()
            if split in SPLIT_FOLDERS and len(image.relative_to(image_dir).parts) > 1:
                layout.splits.setdefault(split, set()).add(_absolute(image))
    else:
        images = files_with_suffix(root, IMAGE_SUFFIXES)
    layout.images = sorted(_absolute(p) for p in images)
    return layout


def find_yolo_layout(root: Path) -> YoloLayout:
    """The class names, images, splits and label folders of ``root`` (a folder or a yaml).

    Raises a DatasetError naming ``root``, what was looked for and the fix."""
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        layout = _from_yaml(root)
    elif not root.is_dir():
        state = "is not a folder or a .yaml file" if root.exists() else "does not exist"
        raise DatasetError(f"{root} {state}; pass the YOLO dataset's folder or its data.yaml")
    else:
        top = FolderFiles(root)
        yamls = files_with_suffix(root, (".yaml", ".yml"))
        yaml_path = next(filter(None, map(top.find, YAML_NAMES)), None)
        yaml_path = yaml_path or (yamls[0] if len(yamls) == 1 else None)
        labels = child_folder(root, ("labels",))
        classes = top.find("classes.txt") or (labels and FolderFiles(labels).find("classes.txt"))
        if yaml_path is not None:
            layout = _from_yaml(yaml_path)
        elif classes:
            found = YoloLayout(_absolute(root), _txt_names(classes), classes, [])
            layout = _discover(found.root, found)
        else:
            has_xml = files_with_suffix(root, (".xml",)) or files_below(root, ".xml")
            voc = " (it holds .xml files: use `data convert-voc`)" if has_xml else ""
            several = f" (it holds {len(yamls)} .yaml files: pass the dataset's one)"
            several = several if yamls else ""
            raise DatasetError(
                f"{root} has no data.yaml, dataset.yaml or classes.txt (in it or in its labels/)"
                f"{several}{voc}; YOLO labels need the class names: write classes.txt beside the "
                "images with one name a line, class 0 first"
            )
    if not layout.images:
        raise DatasetError(
            f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, any case, under "
            "images/, directly in the folder, or where data.yaml's train/val/test point); put "
            "the images there"
        )
    return layout
