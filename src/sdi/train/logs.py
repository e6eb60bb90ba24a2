"""TensorBoard event files of a run, so that ``tensorboard --logdir runs/`` shows every run by its folder.

Scalars every step: ``loss/total``, ``loss/distill``, ``loss/<regularizer>`` (weighted, as in the total),
``t`` (the rule's timestep), ``grad_norm`` (before Adam) and ``time/s_per_step`` (wall time between two
logged steps). Images every ``image_every`` steps and at the last one: ``render`` (the step's views side by
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

from sdi.train.loop import StepInfo

IMAGE_EVERY = 25
"""Steps between logged images (300 steps: 12 images, plus the last step)."""


def side_by_side(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (3, H, B W) in [0, 1], on the CPU."""
    return torch.cat(list(images.detach().float().clamp(0, 1).cpu()), dim=-1)


class RunLog:
    """A run's TensorBoard writer: ``log(info)`` after every step, ``close()`` at the end."""

    def __init__(self, log_dir: Path, decode: Callable[[Tensor], Tensor], start_step: int, total_steps: int,
                 image_every: int = IMAGE_EVERY):
        from tensorboardX import SummaryWriter

        # The first step logged is start_step + 1; the suffix orders (and keeps apart) files opened in one second.
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None, flush_secs=10,
                                    filename_suffix=f".from{start_step:08d}")
        self.decode, self.total_steps, self.image_every = decode, total_steps, image_every
        self.last = time.perf_counter()
        self.seconds = 0.0
        """Time spent inside ``log`` (what logging costs a run)."""

    def log(self, info: StepInfo) -> None:
        """Scalars of ``info``; its render and target images every ``image_every`` steps and at the end."""
        start = time.perf_counter()
        scalars = {"loss/total": info.loss, "loss/distill": info.distill, "t": info.t, "grad_norm": info.grad_norm,
                   "time/s_per_step": start - self.last,
                   **{f"loss/{name}": value for name, value in info.regularizers.items()}}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, info.step)
        if info.render is not None and (info.step % self.image_every == 0 or info.step == self.total_steps):
            self.log_images(info)
        self.last = time.perf_counter()
        self.seconds += self.last - start

    @torch.no_grad()
    def log_images(self, info: StepInfo) -> None:
        self.writer.add_image("render", side_by_side(info.render), info.step)
        if info.target is not None:
            self.writer.add_image("target", side_by_side(self.decode(info.target) * 0.5 + 0.5), info.step)

    def close(self) -> None:
        self.writer.close()
