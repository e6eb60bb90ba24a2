"""Run logs: TensorBoard's own loader reads every run's event files (scalars each step, images every N)."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdi.train.logs import RunLog
from sdi.train.loop import StepInfo

from conftest import TINY_RESOLUTION

SCALARS = {"loss/total", "loss/distill", "t", "grad_norm", "time/s_per_step"}


def events(log_dir) -> EventAccumulator:
    """Everything TensorBoard would show for ``log_dir`` (what `tensorboard --logdir` loads)."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_a_run_writes_scalars_every_step_and_images_at_the_end(generated_run):
    run_dir, status, _ = generated_run
    assert status == 0 and list(run_dir.glob("events.out.tfevents.*"))
    logged = events(run_dir)
    assert SCALARS <= set(logged.Tags()["scalars"]) and "loss/convexity" in logged.Tags()["scalars"]
    for tag in SCALARS:
        assert [e.step for e in logged.Scalars(tag)] == [1, 2, 3], tag
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert logged.Scalars("loss/total")[-1].value == pytest.approx(metrics["final_loss"], rel=1e-6)
    total = logged.Scalars("loss/total")[0].value
    parts = logged.Scalars("loss/distill")[0].value + logged.Scalars("loss/convexity")[0].value
    assert total == pytest.approx(parts, rel=1e-5)
    assert all(e.value > 0 for e in logged.Scalars("grad_norm") + logged.Scalars("time/s_per_step"))
    for tag in ("render", "target"):  # 3 steps: only the last step's images
        (image,) = logged.Images(tag)
        assert image.step == 3 and (image.width, image.height) == (2 * TINY_RESOLUTION, TINY_RESOLUTION)


def fake_step(step: int, loss: float) -> StepInfo:
    losses = {"loss": torch.tensor(loss), "distill": torch.tensor(loss)}
    return StepInfo(step, 500, losses, torch.tensor(1.0), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1)


def test_a_resumed_run_replaces_what_the_killed_one_logged_after_its_checkpoint(tmp_path):
    killed = RunLog(tmp_path, lambda x: x, start_step=0, total_steps=6, image_every=2)
    for step in range(1, 6):  # checkpoint at step 3, killed after logging step 5
        killed.log(fake_step(step, 1.0))
    killed.close()
    resumed = RunLog(tmp_path, lambda x: x, start_step=3, total_steps=6, image_every=2)  # opened the same second
    for step in range(4, 7):
        resumed.log(fake_step(step, 2.0))
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    logged = events(tmp_path)
    assert [(e.step, e.value) for e in logged.Scalars("loss/total")] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert [image.step for image in logged.Images("render")] == [2, 4, 6]
    assert resumed.seconds > 0
