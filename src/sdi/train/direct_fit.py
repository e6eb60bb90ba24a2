"""Fit a preset's scene straight to ground-truth renders (MSE, no prior): the best a prior could get.

The step is the training loop's (``render_step``, ``optimizer_step``: same cameras, render call, Adam and
learning-rate schedule), with the distillation loss replaced by the MSE to the sphere-traced ground truth
(``render_ground_truth``, supersampled 2x) at the sampled cameras. Scored at ``held_out_cameras(8, 64)``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from sdi.export.run_outputs import render_views
from sdi.metrics import mask_iou, psnr, ssim
from sdi.scene.cameras import held_out_cameras
from sdi.scene.catalog import CatalogObject
from sdi.scene.fields import GridField
from sdi.scene.ground_truth import over_background, render_ground_truth
from sdi.train.loop import Scene, TrainState, new_state, optimizer_step, render_step
from sdi.train.presets import Preset


def held_out_scores(scene: Scene, obj: CatalogObject, size: int = 64) -> dict[str, float]:
    """Mean PSNR, SSIM and mask IoU of deterministic renders at the 8 held-out cameras against the ground truth."""
    cameras = held_out_cameras(8, size)
    truth = render_ground_truth(obj, cameras, supersample=2)
    out = render_views(scene, cameras)
    return {"psnr": psnr(out.rgb, truth.rgb).mean().item(), "ssim": ssim(out.rgb, truth.rgb).mean().item(),
            "mask_iou": mask_iou(out.opacity, truth.mask).mean().item()}


def grow_grid(state: TrainState, resolution: int) -> None:
    """Upsample the scene's GridField (and Adam's moments of it) trilinearly to ``resolution`` per side."""
    field, optimizer = state.scene.field, state.optimizer
    if not isinstance(field, GridField):
        raise ValueError(f"grow_grid needs a GridField, got {type(field).__name__}")

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(resolution,) * 3, mode="trilinear", align_corners=True)

    old = field.grid
    moments = optimizer.state.pop(old, {})
    with torch.no_grad():
        field.grid = nn.Parameter(up(old))
    field.cfg = replace(field.cfg, resolution=resolution)
    for group in optimizer.param_groups:
        group["params"] = [field.grid if p is old else p for p in group["params"]]
    optimizer.state[field.grid] = {k: up(v) if v.dim() == 5 else v for k, v in moments.items()}


def fit_step(state: TrainState, preset: Preset, obj: CatalogObject) -> tuple[torch.Tensor, float]:
    """One step of the loop with the MSE to the ground truth as the loss; returns (loss, seconds without the
    ground-truth render)."""
    start = time.perf_counter()
    cameras, out = render_step(state, preset)
    truth_start = time.perf_counter()
    with torch.no_grad():
        truth = render_ground_truth(obj, cameras, supersample=2)
        truth = over_background(truth.rgb, truth.mask, cameras.background)  # the render's own background
    truth_s = time.perf_counter() - truth_start
    loss = F.mse_loss(out.rgb, truth)
    optimizer_step(state, preset, loss)
    return loss.detach(), time.perf_counter() - start - truth_s


def direct_fit(
    preset: Preset,
    obj: CatalogObject,
    seed: int = 0,
    steps: int | None = None,
    *,
    field: nn.Module | None = None,
    background: nn.Module | None = None,
    grow: tuple[tuple[int, int], ...] = (),
) -> tuple[Scene, dict[str, float]]:
    """Train ``preset``'s scene on ``obj``'s ground truth for ``steps`` (the preset's by default); ``field`` and
    ``background`` replace the preset's, ``grow`` lists (step, resolution) upsamplings of a GridField. Returns the scene
    and held-out {"psnr", "ssim", "mask_iou"} plus "s_per_step" (mean training step time, ground truth excluded)."""
    preset = replace(preset, steps=steps or preset.steps)
    state = new_state(preset, seed)
    if field is not None or background is not None:
        scene = state.scene
        scene.field, scene.background = field or scene.field, background or scene.background
        params = [p for m in (scene.field, scene.background) for p in m.parameters()]
        state.optimizer = type(state.optimizer)(params, **state.optimizer.defaults)
    schedule, seconds = dict(grow), 0.0
    while state.step < preset.steps:
        if state.step in schedule:
            grow_grid(state, schedule[state.step])
        _, dt = fit_step(state, preset, obj)
        seconds += dt
    state.scene.field.eval()
    return state.scene, {**held_out_scores(state.scene, obj), "s_per_step": seconds / preset.steps}
