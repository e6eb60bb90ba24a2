"""View-dependent prompting (DreamFusion), with threestudio's exact bins.

Angles in degrees; azimuth 0 = front (+z), 90 = +x; elevation above the xz plane. threestudio first
shifts the azimuth, az' = ((az + 180) mod 360) - 180, then bins each camera, all bounds strict:
overhead if elevation > 60, else front if -45 < az' < 45, back if az' > 135 or az' < -135, else
side (so |az'| = 45 or 135 is side, elevation 60 is not overhead). Everything stays a tensor: no
host synchronisation per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch

DIRECTIONS = ("side", "front", "back", "overhead")
"""View names in threestudio's order (``text_embeddings_vd`` rows, ``view_index`` values)."""
SIDE, FRONT, BACK, OVERHEAD = range(4)
FRONT_DEG, BACK_DEG, OVERHEAD_DEG = 45.0, 45.0, 60.0
"""threestudio's front_threshold, back_threshold and overhead_threshold."""


def view_prompt(prompt: str, view: str) -> str:
    """DreamFusion's view suffix: "a cat" -> "a cat, front view"."""
    return f"{prompt}, {view} view"


def has_view_suffix(prompt: str) -> bool:
    """Whether a prompt already names a view (then priors leave it alone)."""
    return any(prompt.endswith(view_prompt("", v)) for v in DIRECTIONS)


def shift_azimuth(azimuth: Tensor) -> Tensor:
    """az' = ((az + 180) mod 360) - 180, in [-180, 180) (threestudio's ``shift_azimuth_deg``)."""
    return (azimuth + 180) % 360 - 180


def camera_angles(cameras: CameraBatch) -> tuple[Tensor, Tensor]:
    """(B,) float32 elevation and shifted azimuth of each camera, in degrees."""
    angles = cameras.elevation_azimuth().float()
    return angles[:, 0], shift_azimuth(angles[:, 1])


def view_index(elevation: Tensor, azimuth: Tensor) -> Tensor:
    """(B,) int64 index into DIRECTIONS of each camera (``azimuth`` already shifted)."""
    index = torch.full_like(elevation, SIDE, dtype=torch.long)
    index = torch.where((azimuth > -FRONT_DEG) & (azimuth < FRONT_DEG), FRONT, index)
    index = torch.where((azimuth > 180 - BACK_DEG) | (azimuth < -180 + BACK_DEG), BACK, index)
    return torch.where(elevation > OVERHEAD_DEG, OVERHEAD, index)


def view_prompts(prompt: str) -> tuple[str, ...]:
    """The four view prompts of ``prompt`` in DIRECTIONS order."""
    return tuple(view_prompt(prompt, name) for name in DIRECTIONS)
