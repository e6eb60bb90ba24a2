"""Runs requested from the web page: one at a time per device, the others wait in that device's queue.

A job runs ``sdi.cli.generate.generate`` (what `sdi generate` runs) in a worker thread of its device, so a
closed browser tab does not stop it. Its errors become the CLI's one-line message on the job; nothing a job
raises reaches the server.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from torch import Tensor

from sdi.export.options import MeshOptions
from sdi.train.run import RunConfig

State = Literal["queued", "training", "exporting", "done", "failed"]


@dataclass
class Job:
    """One requested run and what it has done so far (read by the page while a worker writes it)."""

    id: int
    config: RunConfig
    mesh: MeshOptions
    run_dir: Path
    device: str
    total_steps: int
    state: State = "queued"
    step: int = 0
    loss: float | None = None
    t: int | None = None
    seconds_per_step: float | None = None
    render: Tensor | None = None
    """The latest step's render (B, 3, H, W) in [0, 1]."""
    error: str | None = None
    """The one line `sdi generate` would print."""
    metrics: dict | None = None
    started: float | None = None
    finished: float | None = None
    _last_step_at: float | None = field(default=None, repr=False)

    @property
    def eta_s(self) -> float | None:
        """Seconds of training left at the recent pace (exports not counted)."""
        if self.seconds_per_step is None:
            return None
        return self.seconds_per_step * (self.total_steps - self.step)

    def on_step(self, state, info) -> None:
        """``train_run``'s callback: step, loss, t, pace (a moving average) and the latest render."""
        now = time.perf_counter()
        if self._last_step_at is not None:
            pace = now - self._last_step_at
            self.seconds_per_step = pace if self.seconds_per_step is None else 0.8 * self.seconds_per_step + 0.2 * pace
        self._last_step_at = now
        self.step, self.loss, self.t, self.render = info.step, info.loss, info.t, info.render
        if info.step >= self.total_steps:
            self.state = "exporting"

    @property
    def over(self) -> bool:
        return self.state in ("done", "failed")


def run_job(job: Job) -> dict:
    """Train and export ``job`` exactly as `sdi generate` does."""
    from sdi.cli.generate import generate

    return generate(job.run_dir, job.config, job.mesh, progress=False, on_step=job.on_step)


class RunQueue:
    """First come, first served per device; one worker thread per device runs its jobs one after another."""

    def __init__(self, runner: Callable[[Job], dict] = run_job):
        self.runner = runner
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue] = {}
        self._waiting: dict[str, list[Job]] = {}
        self._running: dict[str, Job | None] = {}
        self._ids = itertools.count(1)
        self._names: set[Path] = set()

    def submit(self, config: RunConfig, mesh: MeshOptions, run_dir: Path, device: str, total_steps: int) -> Job:
        """Queue a run on ``device``; it starts when the device's earlier runs are over."""
        with self._lock:
            job = Job(next(self._ids), config, mesh, run_dir, device, total_steps)
            self._names.add(run_dir)
            if device not in self._queues:
                self._queues[device], self._waiting[device], self._running[device] = queue.Queue(), [], None
                threading.Thread(target=self._work, args=(device,), name=f"sdi-runs-{device}", daemon=True).start()
            self._waiting[device].append(job)
            self._queues[device].put(job)
        return job

    def ahead(self, job: Job) -> int:
        """Runs before ``job`` on its device (the running one included); 0 once it runs."""
        with self._lock:
            if job not in self._waiting.get(job.device, []):
                return 0
            return self._waiting[job.device].index(job) + (self._running[job.device] is not None)

    def fresh_run_dir(self, root: Path, name: str) -> Path:
        """``root/name``, or ``root/name-2``, ``-3``... when that folder exists or a queued run has it."""
        with self._lock:
            for n in itertools.count(1):
                path = root / (name if n == 1 else f"{name}-{n}")
                if not path.exists() and path not in self._names:
                    return path

    def _work(self, device: str) -> None:
        while True:
            job = self._queues[device].get()
            with self._lock:
                self._waiting[device].remove(job)
                self._running[device] = job
            self._run(job)
            with self._lock:
                self._running[device] = None
                self._names.discard(job.run_dir)

    def _run(self, job: Job) -> None:
        from sdi.cli.main import error_line

        job.state, job.started = "training", time.time()
        try:
            job.metrics = self.runner(job)
            job.state = "done"
        except Exception as error:  # noqa: BLE001 - a failed run must never take the server down
            line = error_line("generate", error)  # bad input or a fault: the CLI's one line
            if line is None:
                traceback.print_exc(file=sys.stderr)
                line = f"sdi serve: internal error: {type(error).__name__}: {error}"
            job.error, job.state = line, "failed"
        finally:
            job.finished = time.time()


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def status_text(job: Job, ahead: int) -> str:
    """One status line of ``job``: waiting, training (step, loss, t, pace, ETA), exporting, done or the error."""
    if job.state == "queued" and not ahead:
        return f"Queued on {job.device}."
    if job.state == "queued":
        return (f"Waiting: {ahead} run{'s' * (ahead != 1)} ahead on {job.device} (one run at a time per device); "
                f"this run starts when {'they finish' if ahead != 1 else 'it finishes'}.")
    if job.state == "training":
        if not job.step:
            return f"Starting on {job.device}: loading the prior for {job.config.prompt!r}..."
        eta = f", ETA {duration(job.eta_s)}" if job.eta_s is not None else ""
        pace = f", {job.seconds_per_step:.2f} s/step" if job.seconds_per_step is not None else ""
        return f"Training step {job.step}/{job.total_steps}: loss {job.loss:.4g}, t {job.t}{pace}{eta}."
    if job.state == "exporting":
        return "Exporting the turntable, the views and the textured mesh..."
    if job.state == "failed":
        return job.error
    from sdi.cli.generate import describe_mesh

    mesh = describe_mesh(job.metrics["exports"]["mesh"])
    return (f"Done: {job.metrics['steps']} steps in {job.metrics['wall_time_s']:.1f} s; wrote {job.run_dir}; "
            f"{mesh}.")
