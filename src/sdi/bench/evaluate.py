"""Quality of a trained scene against the catalog's ground truth, at held-out cameras.

| metric | definition |
|---|---|
| ``psnr``, ``ssim`` | rgb vs the sphere-traced ground truth (both on white), mean over views |
| ``mask_iou`` | rendered opacity vs the ground-truth mask, thresholded at 0.5 |
| ``detail_ratio`` | high-frequency energy of the render / of the ground truth (1 = as detailed), whole image |
| ``masked_detail_ratio`` | the same inside the ground-truth mask eroded by 3 pixels (the blur radius): blind |
| | to floaters, speckle and the silhouette edge (``metrics.masked_detail_ratio``) |
| ``saturation_error`` | mean absolute HSV-saturation difference inside the ground-truth mask |
| ``diverged`` | 1 if the render has NaNs or the volume is empty (mean opacity < 0.01) |
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdi import metrics
from sdi.scene.cameras import held_out_cameras
from sdi.scene.catalog import parse_prompt
from sdi.scene.ground_truth import render_ground_truth

EMPTY_OPACITY = 0.01
"""Mean opacity below which a scene counts as an empty volume (diverged)."""


@torch.no_grad()
def evaluate_scene(scene, prompt: str, size: int = 64, views: int = 8) -> dict[str, float]:
    """PSNR, SSIM, mask IoU, detail ratio (whole image and inside the object), saturation error and
    ``diverged`` of ``scene`` (a ``Scene``) at ``held_out_cameras(views, size)`` against the ground truth of
    the catalog ``prompt``."""
    from sdi.export.run_outputs import render_views

    cameras = held_out_cameras(views, size)
    truth = render_ground_truth(parse_prompt(prompt), cameras)
    scene.field.eval()
    out = render_views(scene, cameras)
    rgb, opacity = out.rgb.float(), out.opacity.float()
    diverged = not (torch.isfinite(rgb).all() and torch.isfinite(opacity).all())
    diverged = diverged or opacity.mean().item() < EMPTY_OPACITY
    rgb = torch.nan_to_num(rgb, nan=1.0).clamp(0, 1)
    opacity = torch.nan_to_num(opacity, nan=0.0)
    return {
        "psnr": metrics.psnr(rgb, truth.rgb).mean().item(),
        "ssim": metrics.ssim(rgb, truth.rgb).mean().item(),
        "mask_iou": metrics.mask_iou(opacity, truth.mask).mean().item(),
        "detail_ratio": metrics.detail_ratio(rgb, truth.rgb).mean().item(),
        "masked_detail_ratio": metrics.masked_detail_ratio(rgb, truth.rgb, truth.mask).mean().item(),
        "saturation_error": metrics.saturation_error(rgb, truth.rgb, truth.mask).mean().item(),
        "diverged": float(diverged),
    }


def evaluate_run(run_dir: str | Path, size: int = 64) -> dict[str, float]:
    """``evaluate_scene`` of the scene in RUN_DIR's checkpoint (a run made by ``train_run``)."""
    from sdi.train.run import read_config, restore_state

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state, _ = restore_state(run_dir, config.resolved_preset(), config.seed)
    return evaluate_scene(state.scene, config.prompt, size)
