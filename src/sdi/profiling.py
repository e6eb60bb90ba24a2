"""Measuring a training step: host-device syncs (counted on any device) and stage times (CUDA events).

``SyncCounter`` patches the Python entry points that make the host wait for a device value
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

_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
          "unique", "masked_select", "repeat_interleave")
_TORCH_FUNCTIONS = ("nonzero", "unique", "masked_select", "repeat_interleave")
_HERE = Path(__file__).resolve()


def _is_bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _short(path: Path) -> str:
    """``sdi/...`` or ``torch/...`` (from the last such folder), else the file name."""
    parts = path.parts
    for root in ("sdi", "torch"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root):])
    return path.name


def _caller_site() -> str:
    """``sdi/path.py:line (function)`` of the first frame outside this file."""
    frame = sys._getframe(2)
    while frame is not None and Path(frame.f_code.co_filename).resolve() == _HERE:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{_short(Path(frame.f_code.co_filename).resolve())}:{frame.f_lineno} ({frame.f_code.co_name})"


class SyncCounter:
    """Context manager counting host reads of tensor values by call site.

    >>> with SyncCounter() as syncs:
    ...     step()
    >>> syncs.total, syncs.by_site   # doctest: +SKIP
    """

    def __init__(self):
        self.by_site: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self._saved: list[tuple[object, str, object]] = []
        self._depth = 0

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def _record(self, kind: str) -> None:
        self.by_kind[kind] += 1
        self.by_site[_caller_site()] += 1

    def _wrap(self, owner, name: str, kind: str, when=None):
        real = getattr(owner, name)
        counter = self

        def wrapper(*args, **kwargs):
            if counter._depth == 0 and (when is None or when(*args, **kwargs)):
                counter._record(kind)
            counter._depth += 1  # reads made inside another read (e.g. __bool__ -> item) count once
            try:
                return real(*args, **kwargs)
            finally:
                counter._depth -= 1

        self._saved.append((owner, name, real))
        setattr(owner, name, wrapper)

    def __enter__(self) -> SyncCounter:
        for name in _READS:
            if name == "repeat_interleave":
                self._wrap(torch.Tensor, name, name, when=lambda self_, *a, **k: "output_size" not in k)
            else:
                self._wrap(torch.Tensor, name, name)
        for name in _TORCH_FUNCTIONS:
            if name == "repeat_interleave":
                self._wrap(torch, name, name, when=lambda *a, **k: "output_size" not in k and len(a) > 1)
            else:
                self._wrap(torch, name, name)
        self._wrap(torch.Tensor, "__getitem__", "bool-mask index", when=lambda self_, index: _is_bool_mask(index))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, real in reversed(self._saved):
            setattr(owner, name, real)
        self._saved.clear()

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
