"""A run folder belongs to one run.

RUN_DIR holds the files of one run: ``config.json`` and ``checkpoint.safetensors`` (always written together),
the checkpoint before the last one (``checkpoint.prev.safetensors``, kept when a new one is written),
``metrics.json`` and the exports it lists; and, while a process writes into it, the lock ``.sdi.lock``
(an ``flock`` that the kernel releases when the process ends, even by ``kill -9``; the file holds its pid).

A new run refuses a folder that holds a run, unless told to overwrite it; the old run then stays intact
until the new run writes its first checkpoint. ``--resume`` continues the run a folder holds. Nothing here
imports torch, so the command line refuses a folder before any heavy import.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Iterator

from sdi.errors import UserError, write_error

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
PREVIOUS = "checkpoint.prev.safetensors"
METRICS = "metrics.json"
LOCK = ".sdi.lock"
RUN_FILES = (CONFIG, CHECKPOINT, PREVIOUS, METRICS)
"""Files whose presence means a folder holds a run."""
LEFTOVER = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.\w+)?|\." + re.escape(PREVIOUS) + r"\.\d+\.tmp")
"""Names of the temporary files of ``sdi.io.atomic_path`` and ``keep_previous``."""
SLUG_CHARS = 60
"""Longest prompt part of a default folder name (file systems allow 255 bytes a name)."""


class RunFolderError(UserError):
    """A folder that this run may not use (it holds another run, another process writes into it...)."""


def checkpoint_meta(path: Path) -> dict:
    """The ``meta`` of a checkpoint (``step``, ``extra.config``...) read from its safetensors header alone
    (no tensors, no torch); {} when the file is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                return {}
            meta = json.loads(json.loads(f.read(size))["__metadata__"]["meta"])
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def progress(run_dir: Path) -> tuple[str | None, int | None, int | None]:
    """(prompt, checkpoint step, total steps) of the run in ``run_dir``, each None when unknown."""
    meta, config = checkpoint_meta(run_dir / CHECKPOINT), read_json(run_dir / CONFIG)
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    preset = config.get("preset") if isinstance(config.get("preset"), dict) else {}
    prompt, step, total = run.get("prompt"), meta.get("step"), preset.get("steps")
    return (prompt if isinstance(prompt, str) else None, step if isinstance(step, int) else None,
            total if isinstance(total, int) else None)


def describe(run_dir: Path) -> str | None:
    """What run ``run_dir`` holds, in words ("a finished run of 'a red cube' (300 of 300 steps)"); None if none."""
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return None
    prompt, step, total = progress(run_dir)
    of = f" of {prompt!r}" if prompt else ""
    if step is None:
        return f"the files of an earlier run ({', '.join(present)})"
    if total is None or step < total:
        return f"an unfinished run{of} (stopped at step {step}{f' of {total}' if total else ''})"
    if not (run_dir / METRICS).exists():
        return f"a trained run{of} ({step} of {total} steps) whose exports are missing"
    return f"a finished run{of} ({step} of {total} steps)"


def _what_to_do(run_dir: Path, held: str) -> str:
    if held.startswith("an unfinished run"):
        return f"continue it with --resume {run_dir}, replace it with --overwrite, or choose another --out"
    return "replace it with --overwrite, or choose another --out"


def check_new(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse, in one line, a folder a new run may not use: a file, a path the file system refuses (a name too
    long...), or a folder holding a run (unless ``overwrite``)."""
    try:
        os.stat(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        pass  # created later (a file in the way of its parents is reported then)
    except OSError as error:
        raise write_error(run_dir, error) from error
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a folder; choose another --out")
    held = describe(run_dir) if run_dir.is_dir() and not overwrite else None
    if held:
        raise RunFolderError(f"{run_dir} holds {held}; {_what_to_do(run_dir, held)}")


def check_resumable(run_dir: Path) -> None:
    """Refuse, in one line, a folder that holds no run to continue."""
    if not (run_dir / CONFIG).is_file():
        raise RunFolderError(no_config(run_dir))
    if not (run_dir / CHECKPOINT).is_file():
        raise RunFolderError(f"{run_dir} holds no {CHECKPOINT}, so there is nothing to resume{kept_text(run_dir)}; "
                             "start the run again with --overwrite")


def no_config(run_dir: Path) -> str:
    """The message for a folder without config.json, where one is needed."""
    return (f"{run_dir / CONFIG} not found; is {run_dir} a folder made by `sdi generate`? (a run stopped before "
            "its first checkpoint leaves nothing to resume: start it again)")


def kept_text(run_dir: Path) -> str:
    """'' or a clause naming the previous checkpoint, when one is kept (for messages about a bad checkpoint)."""
    previous = run_dir / PREVIOUS
    if not previous.is_file():
        return ""
    step = checkpoint_meta(previous).get("step")
    return f" (the checkpoint before it, step {step}, is kept in {previous})"


def default_name(prompt: str, preset: str, seed: int) -> str:
    """``<prompt words>-<preset>-s<seed>``, the prompt part cut to SLUG_CHARS at a word boundary."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    if len(slug) > SLUG_CHARS:
        slug = slug[:SLUG_CHARS].rsplit("-", 1)[0]
    return f"{slug or 'run'}-{preset}-s{seed}"


def fresh(default: Path) -> Path:
    """``default``, or the first of ``default-2``, ``default-3``... that holds no run (never reuse a run)."""
    candidate, n = default, 1
    while candidate.exists() and (not candidate.is_dir() or describe(candidate)):
        n += 1
        candidate = default.with_name(f"{default.name}-{n}")
    return candidate


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block, or refuse in one line when another process holds it."""
    path = run_dir / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise write_error(path, error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RunFolderError(f"another sdi process{pid} is writing to {run_dir} (it holds {path}); "
                                 "wait for it to finish or choose another --out") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    with contextlib.suppress(OSError):  # the pid is for messages only: a full disk must not stop the run here
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        Path(path).unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def claim(run_dir: Path, resume: bool = False, overwrite: bool = False) -> Iterator[list[Path]]:
    """Hold ``run_dir`` for one run: create it, take its lock, remove temporary files a killed writer left, and
    check (under the lock) that it holds a checkpoint to continue (``resume``) or no run (unless ``overwrite``).
    Yields the files of the run being overwritten, for ``remove_files`` after the new run's first checkpoint.
    A folder this created and left empty is removed again."""
    if resume and overwrite:
        raise RunFolderError("give --resume or --overwrite, not both")
    check_new(run_dir, overwrite=True)  # a file in the way
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(run_dir, error) from error
    try:
        with locked(run_dir):
            for leftover in run_dir.iterdir():  # temporary files of a writer killed mid-write
                if LEFTOVER.fullmatch(leftover.name):
                    leftover.unlink(missing_ok=True)
            if resume:
                check_resumable(run_dir)
            else:
                check_new(run_dir, overwrite)
            yield run_files(run_dir) if overwrite and describe(run_dir) else []
    finally:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty: a run that failed before writing anything leaves no folder


def run_files(run_dir: Path) -> list[Path]:
    """The files of the run in ``run_dir`` besides config and checkpoint: the previous checkpoint, metrics.json,
    the exports it lists (by name, in ``run_dir``: a copied run folder lists the paths of the original) and its
    TensorBoard event files."""
    exports = read_json(run_dir / METRICS).get("exports")
    listed = [p for v in (exports.values() if isinstance(exports, dict) else ())
              for p in (v.values() if isinstance(v, dict) else [v]) if isinstance(p, str)]
    exported = [run_dir / Path(p).name for p in listed if (run_dir / Path(p).name).is_file()]
    return [run_dir / PREVIOUS, run_dir / METRICS, *exported, *sorted(run_dir.glob("events.out.tfevents.*"))]


def remove_files(paths: list[Path]) -> None:
    """Delete ``paths`` (the files of an overwritten run), those that exist."""
    for path in paths:
        path.unlink(missing_ok=True)


def keep_previous(run_dir: Path) -> None:
    """Before a new checkpoint replaces CHECKPOINT, keep it as PREVIOUS: a hard link (no copy, no room needed),
    so that at every moment CHECKPOINT holds the last good state, whatever happens to the next write."""
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not current.is_file():
        return
    tmp = run_dir / f".{PREVIOUS}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(current, tmp)
        os.replace(tmp, previous)
    except OSError as error:  # a file system without hard links: keep no previous checkpoint rather than fail
        tmp.unlink(missing_ok=True)
        if error.errno not in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
            raise write_error(previous, error) from error
