"""Measuring a training step: host-device syncs (counted on any device) and stage times (CUDA events).

``SyncCounter`` watches (as a ``TorchFunctionMode``) the calls that make the host wait for a device value
(``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()`` / ``int()`` / ``float()`` of a tensor,
``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, ``repeat_interleave`` without
``output_size``) and counts them by call site, so a CPU test can bound the syncs a GPU step would make.
It counts what a GPU run would sync on *if the tensor lived on the GPU*: reads of tensors that stay on
the host in a GPU run too (e.g. the schedule's ``alphas_cumprod``) are counted as well, by site, so the
caller can tell them apart. Blocking host-to-device copies (``.to(cuda)`` of a CPU tensor) also sync on
CUDA and are invisible here: ``torch.cuda.set_sync_debug_mode`` finds those on a GPU.

``StageTimer`` times named stages of a step with CUDA events (no sync until ``summary``) or, off CUDA,
with ``time.perf_counter``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

_READS = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                    "unique", "unique_consecutive", "masked_select", "argwhere"})
_HERE = Path(__file__).resolve()
_TORCH = Path(torch.__file__).resolve().parent
_TORCH_PLUMBING = (_TORCH / "overrides.py", _TORCH / "_tensor.py", _TORCH / "utils" / "_device.py")


def _is_bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _kind(func, args, kwargs) -> str | None:
    """The kind of host read ``func(*args, **kwargs)`` is, or None."""
    name = getattr(func, "__name__", "")
    if name in _READS:
        return name
    if name == "__getitem__" and len(args) > 1 and _is_bool_mask(args[1]):
        return "bool-mask index"
    if name == "repeat_interleave" and "output_size" not in (kwargs or {}) and len(args) > 1 \
            and isinstance(args[1], torch.Tensor):
        return name
    return None


def _short(path: Path) -> str:
    """``sdi/...`` or ``torch/...`` (from the last such folder), else the file name."""
    parts = path.parts
    for root in ("sdi", "torch"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root):])
    return path.name


def _caller_site() -> str:
    """``sdi/path.py:line (function)`` of the first frame outside this file and torch's dispatch plumbing."""
    frame = sys._getframe(2)
    while frame is not None and Path(frame.f_code.co_filename).resolve() in (_HERE, *_TORCH_PLUMBING):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{_short(Path(frame.f_code.co_filename).resolve())}:{frame.f_lineno} ({frame.f_code.co_name})"


class SyncCounter(TorchFunctionMode):
    """Context manager counting host reads of tensor values by call site, as a ``TorchFunctionMode`` (it sees
    every torch function and Tensor method called while it is active; nothing is patched).

    >>> with SyncCounter() as syncs:
    ...     step()
    >>> syncs.total, syncs.by_site   # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.by_site: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = _kind(func, args, kwargs)
        if kind is not None:
            self.by_kind[kind] += 1
            self.by_site[_caller_site()] += 1
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        """One line per call site, most frequent first."""
        return "\n".join(f"{n:4d}  {site}" for site, n in self.by_site.most_common())


class StageTimer:
    """Wall time of named stages, summed over a run: CUDA events on a CUDA device (read once, in
    ``summary``), ``perf_counter`` elsewhere. Nested stages are timed independently."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self._events: dict[str, list] = defaultdict(list)
        self._seconds: dict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.counts[name] += 1
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[name].append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._seconds[name] += time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        """Total seconds per stage (synchronises the device once)."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                self._seconds[name] = sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
            self._events.clear()
        return dict(self._seconds)
