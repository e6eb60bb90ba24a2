"""Errors whose message is one line saying what happened and what to do; ``sdi`` prints them without a traceback.

Nothing here imports more than the standard library: the command line raises these before any heavy import.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """Bad input, or a fault of the machine (disk, permissions, a missing extra): one line, exit status 2."""


class WriteError(OSError):
    """A file or folder could not be written, for a reason of the disk: which path, why, and how much room."""

    def __init__(self, message: str, path: str | os.PathLike[str], code: int | None):
        super().__init__(message)
        self.message, self.filename, self.errno = message, str(path), code

    def __str__(self) -> str:
        return self.message


def size_text(n: int) -> str:
    """Bytes as 512 B / 12.3 KiB / 5.2 MiB / 1.5 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def free_space(path: Path) -> int | None:
    """Free bytes on the disk of ``path`` (its nearest existing folder), or None when that cannot be told."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _reason(path: Path, code: int | None, needed: int | None) -> str | None:
    """Why writing ``path`` failed with errno ``code``, and what to do; None for an error that is not the disk's."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_space(path)
        room = f"it needs {size_text(needed)}" if needed is not None else "the disk is full"
        free_text = f", {size_text(free)} free" if free is not None else ""
        return (f"no room to write {path}: {room}{free_text} on its disk; files written before are intact: "
                "free some space or write elsewhere")
    return {
        errno.EROFS: f"cannot write {path}: the file system is read-only; write elsewhere (--out)",
        errno.EACCES: f"cannot write {path}: permission denied; write elsewhere (--out) or fix its permissions",
        errno.EPERM: f"cannot write {path}: operation not permitted; write elsewhere (--out)",
        errno.ENAMETOOLONG: f"cannot write {path}: a name in it is too long for the file system "
                            f"(the longest has {max(len(p.encode()) for p in path.parts)} bytes; most allow 255); "
                            "use a shorter --out or prompt",
        errno.ENOTDIR: f"cannot write {path}: a part of that path is a file, not a folder; choose another --out",
        errno.EEXIST: f"cannot create folder {path}: a file of that name exists; choose another --out",
        errno.EISDIR: f"cannot write {path}: it is a folder",
    }.get(code)


def write_error(path: str | os.PathLike[str], error: OSError, needed: int | None = None) -> OSError:
    """``error``, raised while writing ``path`` (``needed`` bytes, when known), as a one-line ``WriteError``;
    ``error`` itself when it is not a fault of the disk or the file system."""
    if isinstance(error, WriteError):
        return error
    reason = _reason(Path(path), error.errno, needed)
    return error if reason is None else WriteError(reason, path, error.errno)
