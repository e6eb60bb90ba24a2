"""Direct fit to ground truth improves on the initial field; the lr schedule is a pure function of the step and a
resumed run with it is bit-identical."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from helpers import checkpoint_after, train_to_the_end
from sdi.scene.catalog import parse_prompt
from sdi.train.direct_fit import direct_fit, fit_step, grow_grid, held_out_scores
from sdi.train.loop import new_state, train
from sdi.train.presets import FAST, PRESETS, LrSchedule
from sdi.train.run import restore_state

TINY_PROMPT = "a red cube"
TINY = replace(FAST, resolution=16, num_samples=16, batch=1, radiance_field=replace(FAST.radiance_field, resolution=16))


def test_direct_fit_improves_held_out_psnr_over_the_initial_field():
    obj = parse_prompt(TINY_PROMPT)
    before = held_out_scores(new_state(TINY, seed=0).scene, obj)
    _, metrics = direct_fit(TINY, obj, steps=12)
    assert metrics["psnr"] > before["psnr"] + 1.0 and metrics["mask_iou"] > before["mask_iou"]
    assert set(metrics) == {"psnr", "ssim", "mask_iou", "s_per_step"} and metrics["s_per_step"] > 0


def test_grow_grid_upsamples_the_field_and_adam_keeps_training_it():
    state = new_state(TINY, seed=0)
    fit_step(state, TINY, parse_prompt(TINY_PROMPT))
    grow_grid(state, 24)
    assert state.scene.field.grid.shape == (1, 4, 24, 24, 24) and state.scene.field.cfg.resolution == 24
    assert state.optimizer.state[state.scene.field.grid]["exp_avg"].shape == (1, 4, 24, 24, 24)
    before = state.scene.field.grid.detach().clone()
    fit_step(state, TINY, parse_prompt(TINY_PROMPT))
    assert not torch.equal(before, state.scene.field.grid)


def test_lr_schedule_values():
    assert [LrSchedule()(k, 10) for k in (0, 5, 9)] == [1.0, 1.0, 1.0]
    decay = LrSchedule(final=0.1)
    assert decay(0, 11) == 1.0 and decay(10, 11) == pytest.approx(0.1) and decay(5, 11) == pytest.approx(0.1**0.5)
    cosine = LrSchedule(warmup=4, final=0.0, decay="cosine")
    assert [cosine(k, 15) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(9, 15) == pytest.approx(0.5) and cosine(14, 15) == pytest.approx(0.0, abs=1e-12)
    assert cosine(20, 15) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at final
    with pytest.raises(ValueError, match="exponential"):
        LrSchedule(decay="linear")(0, 2)


def test_the_loop_applies_the_schedule_to_adam(catalog_prior):
    preset = replace(TINY, steps=3, lr_schedule=LrSchedule(final=0.25))
    state = new_state(preset, seed=0)
    lrs = []
    for _ in train(state, preset, preset.rule(), catalog_prior, TINY_PROMPT):
        lrs.append(state.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([preset.lr * preset.lr_schedule(k, 3) for k in range(3)])
    assert math.isclose(lrs[-1], preset.lr * 0.25)


def test_resume_with_an_lr_schedule_is_bit_identical(tmp_path, catalog_prior, monkeypatch):
    preset = replace(TINY, name="tiny", steps=6, checkpoint_every=2, lr_schedule=LrSchedule(2, 0.1, "cosine"))
    monkeypatch.setitem(PRESETS, "tiny", preset)
    whole = train_to_the_end(new_state(preset, seed=1), preset, catalog_prior, TINY_PROMPT)
    checkpoint_after(tmp_path, preset, catalog_prior, TINY_PROMPT, seed=1, steps=3)
    resumed, _ = restore_state(tmp_path, preset, seed=1)
    train_to_the_end(resumed, preset, catalog_prior, TINY_PROMPT)
    for a, b in zip(whole.optimizer.param_groups[0]["params"], resumed.optimizer.param_groups[0]["params"]):
        assert torch.equal(a, b)
    assert whole.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
