"""Atomic file writes and image saving.

Every artefact SDI writes (checkpoints, images, meshes, videos, JSON records) goes through
``atomic_path``: it is written to a temporary file in the destination folder, flushed to disk and
only then ``os.replace``'d onto the final name, so a crash or an exception never leaves a
half-written file behind and never destroys the previous version. Inside ``all_or_nothing()`` the
renames wait for the end of the block, so a group of files (a run's exports) is replaced together or
not at all. A write that fails for a reason of the disk (full, read-only, name too long) raises
``sdi.errors.WriteError``, whose one-line message names the file and the room it needed.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sdi.errors import write_error

PathLike = str | os.PathLike[str]

_held_back: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("held_back", default=None)
"""(temporary file, destination) pairs written inside ``all_or_nothing``, renamed when it ends."""


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so a completed rename survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """Flush a file's contents to disk (writers such as ffmpeg close the file without syncing)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``.

    The temporary name keeps ``path``'s suffix (``.mp4``, ``.png``...) so writers that pick a format
    from the extension work. If the body raises, the temporary file is removed and any existing
    ``path`` is left untouched; a fault of the disk becomes a ``WriteError`` (``size``: the bytes to
    write, for its message). The parent folder must exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer produced no file at {tmp} for {path}")
        _fsync_file(tmp)
        held_back = _held_back.get()
        if held_back is not None:
            held_back.append((tmp, path))
            return
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        translated = write_error(path, error, size) if isinstance(error, OSError) else error
        if translated is not error:
            raise translated from error
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
    """Hold back every atomic write of the block: each file is written under its temporary name and all are
    renamed onto their names when the block ends without an error; on an error they are removed and every
    earlier file is untouched. Yields a list that then holds the paths written. A nested block belongs to the
    outermost one (and its list stays empty)."""
    if _held_back.get() is not None:
        yield []
        return
    pending: list[tuple[Path, Path]] = []
    token = _held_back.set(pending)
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _held_back.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)
    for folder in {path.parent for _, path in pending}:
        _fsync_dir(folder)
    written.extend(path for _, path in pending)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path, len(data)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically; returns the path. NaN and infinities,
    which JSON lacks, are written as null, so the file is always valid JSON."""
    return atomic_write_text(path, json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def to_uint8(images: Tensor | np.ndarray) -> np.ndarray:
    """Convert float (3,H,W)/(B,3,H,W) in [0,1] or uint8 (H,W,3)/(N,H,W,3) to uint8 channels-last.

    Float input is clamped to [0,1] and rounded; the batch dimension is kept if present.
    """
    if isinstance(images, Tensor):
        if images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(f"expected a (3,H,W) or (B,3,H,W) tensor, got shape {tuple(images.shape)}")
        x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return x.movedim(-3, -1).cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected a (H,W,3) or (N,H,W,3) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"expected uint8 or float images in [0,1], got dtype {arr.dtype}")
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    return arr


def save_image(path: PathLike, image: Tensor | np.ndarray) -> Path:
    """Save one image as PNG atomically: float (3,H,W) or (1,3,H,W) in [0,1], or uint8 (H,W,3)."""
    arr = to_uint8(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got a batch of {arr.shape[0]}; use image_grid first")
        arr = arr[0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def image_grid(images: Tensor | np.ndarray, nrow: int, pad: int = 0) -> np.ndarray:
    """Tile a batch (N,3,H,W) float or (N,H,W,3) uint8 into one uint8 (rows*H, nrow*W, 3) image.

    Images fill rows left to right; ``pad`` pixels of black separate them; unused cells stay black.
    """
    arr = to_uint8(images)
    if arr.ndim != 4:
        raise ValueError(f"image_grid needs a batch of images, got shape {arr.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, h, w, _ = arr.shape
    ncol = min(nrow, n)
    nrows = -(-n // nrow)
    grid = np.zeros((nrows * (h + pad) - pad, ncol * (w + pad) - pad, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = arr[i]
    return grid
