"""A prompt's variants: a finite, deterministic family of sharp objects that one prompt describes.

"a red cube with white stripes" names a shape and its colours, not the stripes' phase, frequency or tilt, nor
the exact hue. Each variant keeps the shape (so all of a prompt's variants share one sphere trace per camera) and
paints the pattern in object space through its own transform: rotated (yaw about the vertical axis, then a
tilt), scaled in frequency and shifted in phase, with both colours turned a little about the grey axis. Variant
0 is the catalog object itself. The embedded prior's posterior spreads over these sharp, distinct modes at high
noise: their mean is a blur that no variant is, and a rule that averages ends near it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sdi.scene.catalog import COLORS, PATTERNS, CatalogObject

N_VARIANTS = 16
"""Variants per prompt of the embedded prior."""
VARIANT_SEED = 7
"""Seed of the draws that define variants 1.. (the same for every prompt)."""
MAX_TILT_DEG = 20.0
"""Largest tilt of the pattern's vertical axis."""
FREQUENCY_RANGE = (0.8, 1.25)
"""Pattern frequency factors, drawn log-uniformly."""
MAX_PHASE = 0.27
"""Phase shifts are uniform in [0, MAX_PHASE) per axis: a whole period of every pattern (stripes 0.2,
checkers 2 x 0.135, dots 0.135)."""
MAX_HUE_TURN = 0.04
"""Largest hue turn, in turns (0.04 = 14.4 deg) about the grey axis."""


@dataclass(frozen=True)
class Variant:
    """``obj`` with its pattern seen through a rigid-and-scale transform and its colours hue-turned."""

    obj: CatalogObject
    yaw_deg: float = 0.0
    tilt_deg: float = 0.0
    frequency: float = 1.0
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hue_turn: float = 0.0

    @property
    def prompt(self) -> str:
        """The prompt every variant of ``obj`` answers to."""
        return self.obj.prompt

    def sdf(self, points: Tensor) -> Tensor:
        """The object's signed distance: variants share their geometry."""
        return self.obj.sdf(points)

    def pattern_points(self, points: Tensor) -> Tensor:
        """(N, 3) object points -> the points the pattern is evaluated at: rotate, scale, shift."""
        rotation = pattern_rotation(self.yaw_deg, self.tilt_deg).to(points)
        return (points @ rotation.T) * self.frequency + points.new_tensor(self.phase)

    def albedo(self, points: Tensor) -> Tensor:
        """Surface colour (N, 3) in [0, 1] at points (N, 3)."""
        body = hue_turned(points.new_tensor(COLORS[self.obj.color]), self.hue_turn)
        paint = hue_turned(points.new_tensor(COLORS[self.obj.pattern_color]), self.hue_turn)
        painted = PATTERNS[self.obj.pattern](self.pattern_points(points))
        return torch.where(painted[:, None], paint, body)


def pattern_rotation(yaw_deg: float, tilt_deg: float) -> Tensor:
    """(3, 3) rotation: tilt about x, then yaw about the vertical y axis."""
    y, t = math.radians(yaw_deg), math.radians(tilt_deg)
    yaw = torch.tensor([[math.cos(y), 0.0, math.sin(y)], [0.0, 1.0, 0.0], [-math.sin(y), 0.0, math.cos(y)]])
    tilt = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
    return yaw @ tilt


def hue_turned(rgb: Tensor, turn: float) -> Tensor:
    """``rgb`` (3,) rotated by ``turn`` turns about the grey axis (Rodrigues), clamped to [0, 1]; greys stay."""
    k = rgb.new_full((3,), 3**-0.5)
    angle = 2 * math.pi * turn
    rotated = rgb * math.cos(angle) + torch.linalg.cross(k, rgb) * math.sin(angle) + k * (k @ rgb) * (1 - math.cos(angle))
    return rotated.clamp(0, 1)


def catalog_variants(obj: CatalogObject, n: int = N_VARIANTS) -> list[Variant]:
    """The ``n`` variants of ``obj``: the object itself, then ``n - 1`` fixed draws (the same for every prompt).
    A plain object has no pattern to move: its variants differ in hue alone."""
    if n < 1:
        raise ValueError(f"a prompt needs at least one variant, got {n}")
    g = torch.Generator().manual_seed(VARIANT_SEED)
    variants = [Variant(obj)]
    lo, hi = (math.log(f) for f in FREQUENCY_RANGE)
    for _ in range(n - 1):
        u = torch.rand(7, generator=g, dtype=torch.float64).tolist()
        hue = MAX_HUE_TURN * (2 * u[6] - 1)
        if obj.pattern == "plain":
            variants.append(Variant(obj, hue_turn=hue))
            continue
        variants.append(Variant(obj, yaw_deg=360.0 * u[0], tilt_deg=MAX_TILT_DEG * (2 * u[1] - 1),
                                frequency=math.exp(lo + (hi - lo) * u[2]),
                                phase=(MAX_PHASE * u[3], MAX_PHASE * u[4], MAX_PHASE * u[5]), hue_turn=hue))
    return variants
