"""Fetching published dataset files: streamed downloads, checksums, safe atomic unpacking."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from workbench.data.dataset import DatasetError
from workbench.safe_paths import refuse_existing


@dataclass(frozen=True)
class Download:
    """One published file. ``md5`` / ``sha256`` as the host publishes them (None: not published)."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(path: Path, item: Download) -> bool:
    return all(
        _digest(path, algo) == expected
        for algo, expected in (("md5", item.md5), ("sha256", item.sha256))
        if expected
    )


def download_file(item: Download, out: Path, *, progress: bool = True) -> Path:
    """Stream ``item.url`` to ``out`` through a ``.part`` file, then verify its checksum."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        with urllib.request.urlopen(item.url, timeout=60) as response, part.open("wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=item.filename, disable=not progress
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {item.url}: {err}; check the network and retry"
        ) from err
    if not verified(part, item):
        part.unlink()
        raise DatasetError(
            f"{item.url} does not match its published checksum; the file was deleted, retry "
            "(if it keeps failing, the host changed the file)"
        )
    os.replace(part, out)
    return out


def unpack_zip(archive: Path, dest: Path, *, replace: bool = False) -> None:
    """Extract ``archive`` into ``dest`` atomically; refuse members that would escape ``dest``.

    Files and folders in ``dest`` with the names of the archive's top-level entries are refused
    (an OutputError naming them, before anything moves) unless ``replace``.
    """
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (staging / member).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise DatasetError(f"{archive} member {member!r} points outside the archive")
            zf.extractall(staging)
        if not replace:
            refuse_existing(
                [dest / item.name for item in staging.iterdir()],
                setting="--root",
                what=f"unpacking {archive.name} would replace",
            )
        for item in staging.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
    except zipfile.BadZipFile as err:
        raise DatasetError(
            f"{archive} is not a valid zip ({err}); delete it and fetch again"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
