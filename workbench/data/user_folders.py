"""Finding the files of a user's labelled folder as labelling tools leave them, renaming nothing.

Folder and file names match in any case (``Images/`` is ``images/``, ``IMG_1.JPG`` is found for
``IMG_1.xml``); an exact-case match wins over a case-insensitive one, and among several
case-insensitive matches the first in sorted order does, so a lookup is deterministic. Only
two folders whose names differ in case alone are refused: which one was meant is unknowable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from workbench.data.dataset import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_SUFFIXES`, in any case."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def child_folder(root: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``root`` called one of ``names`` in any case (earlier names first)."""
    if not root.is_dir():
        return None
    by_lower: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            by_lower.setdefault(entry.name.lower(), []).append(entry)
    for name in names:
        found = by_lower.get(name.lower(), [])
        if len(found) > 1:
            shown = " and ".join(f"{p.name}/" for p in found)
            raise DatasetError(
                f"{root} holds both {shown}: names that differ only in case; merge them into one"
            )
        if found:
            return found[0]
    return None


def files_with_suffix(folder: Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (and below, when ``recursive``) whose suffix is one of
    ``suffixes`` in any case, sorted by path; hidden files (``.name``) are skipped."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    )


def files_below(root: Path, suffix: str, depth: int = 2) -> list[Path]:
    """Files ending in ``suffix`` (any case) in the sub-folders of ``root`` down to ``depth``
    levels: where a user's files may be when the folder given was one too high (bounded, so
    a wrong path such as a home folder is not walked whole)."""
    if not root.is_dir():
        return []
    found = (root.glob("*/" * level + "*") for level in range(1, depth + 1))
    return sorted(p for paths in found for p in paths if p.suffix.lower() == suffix and p.is_file())


class FolderFiles:
    """The files of one folder, found by name or by stem, in any case (one listing, no stat
    per lookup: a folder of 10k images is read once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        names = sorted(e.name for e in os.scandir(folder) if e.is_file()) if folder.is_dir() else []
        self._exact = set(names)
        self._lower: dict[str, str] = {}
        for name in names:
            self._lower.setdefault(name.lower(), name)

    def find(self, name: str) -> Path | None:
        """The file called ``name`` (exact case first), or None."""
        if name in self._exact:
            return self.folder / name
        match = self._lower.get(name.lower())
        return None if match is None else self.folder / match

    def find_image(self, stem: str) -> Path | None:
        """``stem`` with the first of :data:`IMAGE_SUFFIXES` that exists, in any case, or None."""
        for suffix in IMAGE_SUFFIXES:
            found = self.find(stem + suffix)
            if found is not None:
                return found
        return None
