"""Writing without losing anything: every command that writes a file asks here first.

A command never destroys what it did not create. Before writing, it checks its outputs with
:func:`check_output_file` or :func:`refuse_existing`, which refuse, in one line naming the path
and the flag that allows it, to replace an existing file (without ``--force``), to write over the
command's own input (never allowed), or to treat a folder as a file. :func:`writable_folder`
turns an unwritable folder (permissions, a read-only disk) into the same kind of line, naming the
setting that chose it, before any work is done. :func:`move_aside` is how a command "overwrites"
a folder: it renames it to ``NAME.old-N``, so nothing is deleted.

Files are written by :func:`write_atomic`: a temporary file beside the target, then one
``os.replace``, so a reader sees the old file or the new one, never half of one. The temporary
file is created with mode 0o666 and the process umask applies, as for any file the user's shell
creates (``tempfile.mkstemp`` would give 0o600).

:func:`os_error_line` says what went wrong with a write (disk full, read-only, permission) and how
to fix it, in one line, for the command line's error report.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output cannot be written as asked; the message names it and says how to fix it."""


def _shown(path: Path) -> str:
    return str(path) + ("/" if path.is_dir() else "")


def refuse_existing(
    paths: Iterable[str | Path], *, flag: str = "--force", setting: str = "--out", what: str = ""
) -> None:
    """Raise an :class:`OutputError` if any of ``paths`` exists: writing would replace it.

    ``flag`` is the option that allows replacing, ``setting`` the one that chose the path.
    """
    existing = [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if not existing:
        return
    shown = ", ".join(_shown(p) for p in existing[:3])
    more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
    subject = f"{what} {shown}" if what else shown
    verb = "exists" if len(existing) == 1 else "exist"
    raise OutputError(
        f"{subject}{more} already {verb}; pass {flag} to replace it, or choose another {setting}"
    )


def same_file(a: str | Path, b: str | Path) -> bool:
    """True if ``a`` and ``b`` name the same existing file (links and ``..`` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(
    path: str | Path, *, force: bool, setting: str = "--out", inputs: Iterable[str | Path] = ()
) -> Path:
    """``path`` as a file this command may write: not one of its ``inputs`` (never, whatever
    ``force`` says), not a folder, and not an existing file unless ``force``."""
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise OutputError(
                f"{setting} {path} is the input file {source}: writing it would destroy the "
                f"input; choose another {setting}"
            )
    if path.is_dir():
        raise OutputError(f"{setting} {path} is a folder; name a file to write")
    if not force:
        refuse_existing([path], setting=setting)
    return path


def writable_folder(folder: str | Path, setting: str) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises an :class:`OutputError` naming ``setting`` when it cannot (no permission, read-only
    disk, a file of that name), before any work is done.
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{setting}={folder} is a file, not a folder; choose a folder")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise OutputError(os_error_line(err, setting=f"{setting}={folder}")) from err
    return folder


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and one ``os.replace``; the new file
    gets mode 0o666 minus the umask, like any file the user creates."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def move_aside(folder: str | Path) -> Path:
    """Rename ``folder`` to the first free ``NAME.old-N`` beside it (N = 1, 2, ...) and return
    the new name: how a command replaces a folder without deleting anything."""
    folder = Path(folder)
    for n in range(1, 10_000):
        aside = folder.with_name(f"{folder.name}.old-{n}")
        if not aside.exists():
            os.rename(folder, aside)
            return aside
    raise OutputError(f"{folder}: no free NAME.old-N name beside it; delete old copies")


_FIXES = {
    errno.ENOSPC: "free disk space, or write to another disk",
    errno.EDQUOT: "free space within your disk quota, or write to another disk",
    errno.EROFS: "the disk is read-only: write to a folder on a writable disk",
    errno.EACCES: "you may not write there: choose a folder you own, or fix its permissions",
    errno.EPERM: "you may not write there: choose a folder you own, or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}
USER_ERRNOS = frozenset(_FIXES)


def os_error_line(err: OSError, *, setting: str | None = None) -> str:
    """One line for a failed write: what (the path), why (the system's reason), and the fix."""
    where = err.filename if err.filename is not None else (setting or "the output")
    reason = err.strerror or str(err)
    fix = _FIXES.get(err.errno, "check the path and try again")
    chosen = f" (set by {setting})" if setting and err.filename is not None else ""
    return f"cannot write {where}{chosen}: {reason}; {fix}"
