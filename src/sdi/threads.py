"""CPU threads: how many intra-op threads torch uses, chosen before torch starts.

PyTorch's default (one thread per core, threads spinning while they wait) is the worst choice on a small machine
shared with other work: spinning threads steal the cores that the other work and the main thread need. So ``sdi``
sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless it is set, and ``--threads N`` / ``SDI_THREADS``
set the count (``DEFAULT_THREADS`` otherwise; measured in the README, "Threads"). Results do not depend on it:
a run is bit-identical at 1 and 2 threads (tests/test_threads.py), because the renderer pads its field calls to
whole vector blocks per thread (``sdi.scene.renderer.field_at``) and the prior's ground-truth renders run on one
thread (``torch_threads(1)``).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

DEFAULT_THREADS = 1
"""Intra-op threads when neither --threads nor SDI_THREADS is given."""


def threads_from_environment() -> int | None:
    """SDI_THREADS as a positive count, None when unset; a one-line ValueError otherwise."""
    text = os.environ.get("SDI_THREADS", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"SDI_THREADS must be a positive whole number of threads, got {text!r}")
    return int(text)


def configure_threads(threads: int | None = None) -> int:
    """Use ``threads`` (else SDI_THREADS, else DEFAULT_THREADS) intra-op threads; returns the count. Before torch is
    imported this sets OMP_NUM_THREADS (and OMP_WAIT_POLICY=PASSIVE unless set), which subprocesses inherit;
    afterwards it calls ``torch.set_num_threads``."""
    count = threads or threads_from_environment() or DEFAULT_THREADS
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count


@contextmanager
def torch_threads(count: int):
    """torch's intra-op work on ``count`` threads inside the block, and the count as it was after it. One thread: for
    work whose result must not depend on the thread count and that has no cheaper way to be independent of it
    (``render_shared_geometry``)."""
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
