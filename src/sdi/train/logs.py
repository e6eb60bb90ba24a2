"""TensorBoard event files of a run, so that ``tensorboard --logdir runs/`` shows every run by its folder.

Scalars of every step: ``loss/total``, ``loss/distill``, ``loss/<regularizer>`` (weighted, as in the total),
``t`` (the rule's timestep), ``grad_norm`` (before Adam) and ``time/s_per_step`` (wall time between two
logged steps); they are written every ``SYNC_EVERY`` steps with one host copy, so a GPU run does not sync per step. Images every ``image_every`` steps and at the last one: ``render`` (the step's views side by
side) and ``target`` (the rule's target ``x0 - grad`` decoded by the prior, the image the render is pulled
towards). Written with tensorboardX (numpy and protobuf only, no TensorFlow); its writer thread does the file
I/O, so a step pays only for building the records (benchmarks/bench_logging.py measures it).

A resumed run opens a new event file with ``purge_step`` = the first step after its checkpoint: TensorBoard
then drops what the killed process logged after that checkpoint, so each step is shown once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from sdi.train.loop import SYNC_EVERY, StepInfo

IMAGE_EVERY = 25
"""Steps between logged images (300 steps: 12 images, plus the last step)."""
EVENTS_GLOB = "events.out.tfevents.*"
"""TensorBoard's event file names."""
LOSS_TAGS = {"loss": "loss/total", "distill": "loss/distill"}
"""Tags of the step's losses; each regularizer is ``loss/<name>``."""


def side_by_side(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (3, H, B W) in [0, 1], on the CPU."""
    return torch.cat(list(images.detach().float().clamp(0, 1).cpu()), dim=-1)


class RunLog:
    """A run's TensorBoard writer: ``log(info)`` after every step, ``close()`` at the end."""

    def __init__(self, log_dir: Path, decode: Callable[[Tensor], Tensor], start_step: int, total_steps: int,
                 image_every: int = IMAGE_EVERY):
        from tensorboardX import SummaryWriter

        # The first step logged is start_step + 1; the suffix orders (and keeps apart) files opened in one second.
        before = set(log_dir.glob(EVENTS_GLOB))
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None, flush_secs=10,
                                    filename_suffix=f".from{start_step:08d}")
        self.files = sorted(set(log_dir.glob(EVENTS_GLOB)) - before)
        """The event files this log writes."""
        self.decode, self.total_steps, self.image_every = decode, total_steps, image_every
        self.last = time.perf_counter()
        self.seconds = 0.0
        """Time spent inside ``log`` (what logging costs a run)."""
        self.pending: list[tuple[StepInfo, float]] = []
        """Steps whose scalars are not written yet (``SYNC_EVERY`` at most)."""

    def log(self, info: StepInfo) -> None:
        """Buffer the scalars of ``info`` and write them every ``SYNC_EVERY`` steps and at the end, with one host copy
        for all the buffered steps (a step's losses stay on the device); its images every ``image_every`` steps."""
        start = time.perf_counter()
        self.pending.append((info, start - self.last))
        if info.step % SYNC_EVERY == 0 or info.step == self.total_steps:
            self.write_scalars()
        if info.render is not None and (info.step % self.image_every == 0 or info.step == self.total_steps):
            self.log_images(info)
        self.last = time.perf_counter()
        self.seconds += self.last - start

    def write_scalars(self) -> None:
        """Write the buffered steps' scalars: losses and gradient norm, t and s/step."""
        if not self.pending:
            return
        rows = [[*info.losses.values(), *([] if info.grad_norm is None else [info.grad_norm])] for info, _ in self.pending]
        values = iter(torch.stack([v.float().reshape(()) for row in rows for v in row]).tolist())
        for info, seconds in self.pending:
            tags = [LOSS_TAGS.get(name, f"loss/{name}") for name in info.losses]
            tags += [] if info.grad_norm is None else ["grad_norm"]
            for tag in tags:
                self.writer.add_scalar(tag, next(values), info.step)
            self.writer.add_scalar("t", info.t, info.step)
            self.writer.add_scalar("time/s_per_step", seconds, info.step)
        self.pending = []

    @torch.no_grad()
    def log_images(self, info: StepInfo) -> None:
        self.writer.add_image("render", side_by_side(info.render), info.step)
        if info.target is not None:
            self.writer.add_image("target", side_by_side(self.decode(info.target) * 0.5 + 0.5), info.step)

    def close(self) -> None:
        self.write_scalars()
        self.writer.close()

    def discard(self) -> None:
        """Close and delete this log's event files: a run that stops before its first checkpoint leaves nothing."""
        self.writer.close()
        for path in self.files:
            path.unlink(missing_ok=True)
