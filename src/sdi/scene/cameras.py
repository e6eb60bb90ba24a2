"""Pinhole cameras around an object at the origin (OpenGL convention, +y up).

A camera-to-world matrix ``c2w`` (B, 4, 4) has columns right, up, back (= -forward) and the camera
position; the camera looks down its own -z axis. Azimuth 0 puts the camera on the +z axis ("front"),
azimuth 90 on the +x axis; elevation is the angle above the xz plane.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras sharing one image size."""

    c2w: Tensor
    """(B, 4, 4) camera-to-world, OpenGL convention (columns: right, up, back, position)."""
    fovy: Tensor
    """(B,) vertical field of view in radians."""
    height: int
    """Image height in pixels."""
    width: int
    """Image width in pixels."""
    angles_deg: Tensor | None = None
    """(B, 2) elevation and azimuth in degrees as the cameras were built (``orbit_cameras``), so that view
    bins see the given angles exactly (45, not 44.99999); None: read off ``c2w``."""
    background: Tensor | None = None
    """(B, 3) rgb in [0, 1] behind the object in each image, where training composites the render over a random
    colour (``Preset.random_background``): the embedded prior paints its exemplars over the same; None: white."""

    def __post_init__(self):
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"Cameras.c2w must be (B, 4, 4), got {tuple(self.c2w.shape)}")
        if self.fovy.shape != (self.c2w.shape[0],):
            raise ValueError(f"Cameras.fovy must be ({self.c2w.shape[0]},), got {tuple(self.fovy.shape)}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"Cameras need a positive image size, got {self.height}x{self.width}")
        if self.background is not None and self.background.shape != (self.c2w.shape[0], 3):
            raise ValueError(f"Cameras.background must be ({self.c2w.shape[0]}, 3), got {tuple(self.background.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        """The same cameras with their tensors on ``device`` (rays are then cast there)."""
        angles = None if self.angles_deg is None else self.angles_deg.to(device)
        background = None if self.background is None else self.background.to(device)
        return replace(self, c2w=self.c2w.to(device), fovy=self.fovy.to(device), angles_deg=angles,
                       background=background)

    @property
    def positions(self) -> Tensor:
        """(B, 3) camera centres in world space."""
        return self.c2w[:, :3, 3]

    def view_directions(self) -> Tensor:
        """(B, 3) unit vectors from the origin towards each camera."""
        return torch.nn.functional.normalize(self.positions, dim=-1)

    def elevation_azimuth(self) -> Tensor:
        """(B, 2) elevation and azimuth in degrees of each camera as seen from the origin."""
        if self.angles_deg is not None:
            return self.angles_deg
        return direction_elevation_azimuth(self.view_directions())

    def rays(self) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions through pixel centres, each (B, H, W, 3); row 0 is the top."""
        B, H, W = len(self), self.height, self.width
        dtype, device = self.c2w.dtype, self.c2w.device
        tan = torch.tan(self.fovy.to(dtype) / 2).reshape(B, 1, 1)
        ys = 1 - 2 * (torch.arange(H, dtype=dtype, device=device) + 0.5) / H
        xs = 2 * (torch.arange(W, dtype=dtype, device=device) + 0.5) / W - 1
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        x, y = (x * tan * (W / H))[..., None], (y * tan)[..., None]  # (B, H, W, 1) on the z = -1 plane
        right, up, back = (self.c2w[:, None, None, :3, j] for j in range(3))  # each (B, 1, 1, 3)
        directions = torch.nn.functional.normalize(x * right + y * up - back, dim=-1)
        origins = self.positions.reshape(B, 1, 1, 3).expand(B, H, W, 3)
        return origins, directions


def direction_elevation_azimuth(directions: Tensor) -> Tensor:
    """(B, 3) directions -> (B, 2) elevation and azimuth in degrees (azimuth 0 = +z, 90 = +x)."""
    d = torch.nn.functional.normalize(directions, dim=-1)
    elevation = torch.rad2deg(torch.asin(d[:, 1].clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(d[:, 0], d[:, 2]))
    return torch.stack([elevation, azimuth], dim=-1)


def view_bin(directions: Tensor) -> list[str]:
    """Coarse view name per direction (B, 3) from the object: "overhead" above 60 deg elevation,
    else "front" (|azimuth| < 45), "back" (|azimuth| > 135) or "side"."""
    names = []
    for elevation, azimuth in direction_elevation_azimuth(directions).tolist():
        if elevation > 60:
            names.append("overhead")
        elif abs(azimuth) < 45:
            names.append("front")
        elif abs(azimuth) > 135:
            names.append("back")
        else:
            names.append("side")
    return names


def _batch(value: Tensor | float, n: int, device: torch.device) -> Tensor:
    """A scalar or (B,) value as a float32 (n,) tensor on ``device``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=device)
    return value.expand(n).clone() if value.ndim == 0 else value


def orbit_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor | float, fovy_deg: Tensor | float, size: int
) -> Cameras:
    """Square cameras on spheres around the origin, looking at it; angles (B,) in degrees. The cameras live
    on the device of ``elevation_deg``."""
    elevation = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1))
    azimuth = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1))
    if elevation.shape != azimuth.shape:
        raise ValueError(f"orbit_cameras needs as many elevations as azimuths, got {len(elevation)} and {len(azimuth)}")
    n, device = len(elevation), elevation.device
    distance, fovy = _batch(distance, n, device), torch.deg2rad(_batch(fovy_deg, n, device))
    back = torch.stack([elevation.cos() * azimuth.sin(), elevation.sin(), elevation.cos() * azimuth.cos()], dim=-1)
    # right is horizontal and tangent to the azimuth circle: well defined even straight overhead.
    right = torch.stack([azimuth.cos(), torch.zeros_like(azimuth), -azimuth.sin()], dim=-1)
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, device=device).repeat(n, 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, up, back
    c2w[:, :3, 3] = back * distance[:, None]
    angles = torch.stack([torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1),
                          torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)], dim=-1).to(device)
    return Cameras(c2w=c2w, fovy=fovy, height=size, width=size, angles_deg=angles)


def cameras_along(directions: Tensor, distance: float = 1.75, fovy_deg: float = 50.0, size: int = 64) -> Cameras:
    """Square cameras at ``distance`` along each direction (B, 3) from the origin, looking at it."""
    elevation_azimuth = direction_elevation_azimuth(directions.float())
    return orbit_cameras(elevation_azimuth[:, 0], elevation_azimuth[:, 1], distance, fovy_deg, size)


def turntable_cameras(
    n: int, elevation_deg: float = 15.0, distance: float = 1.75, fovy_deg: float = 50.0, size: int = 64
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth from the front (0 deg), at one elevation."""
    azimuth = torch.arange(n, dtype=torch.float32) * 360.0 / n
    azimuth = torch.where(azimuth > 180, azimuth - 360, azimuth)
    return orbit_cameras(torch.full((n,), float(elevation_deg)), azimuth, distance, fovy_deg, size)


def held_out_cameras(n: int = 8, size: int = 64) -> Cameras:
    """Deterministic evaluation views off the exemplar grid (azimuths 22.5 + 360 k / n, elevations 10 / 30)."""
    azimuth = 22.5 + torch.arange(n, dtype=torch.float32) * 360.0 / n
    azimuth = torch.remainder(azimuth + 180, 360) - 180
    elevation = torch.where(torch.arange(n) % 2 == 0, 10.0, 30.0)
    return orbit_cameras(elevation, azimuth, 1.75, 50.0, size)


@dataclass(frozen=True)
class CameraSampling:
    """Uniform random cameras for distillation; ranges are the paper's reference (threestudio) config.
    ``antithetic``: draw half the batch and pair each camera with its twin 180 degrees away in azimuth."""

    distance: tuple[float, float] = (1.5, 2.0)
    """Camera distance from the origin (lo, hi)."""
    fovy_deg: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view in degrees (lo, hi)."""
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    """Elevation above the xz plane in degrees (lo, hi)."""
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    """Azimuth in degrees (lo, hi); 0 = front (+z), 90 = +x."""
    antithetic: bool = False
    """Antithetic pairs (MV-SDI): camera i + B/2 is camera i turned by 180 degrees in azimuth (same elevation,
    distance, field of view), so each step sees both sides of the object; the batch must be even."""

    def __post_init__(self):
        for name in ("distance", "fovy_deg", "elevation_deg", "azimuth_deg"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"CameraSampling.{name} must be (lo, hi) with lo <= hi, got {(lo, hi)}")

    def sample(self, batch: int, size: int, generator: torch.Generator) -> Cameras:
        """``batch`` square cameras with every parameter drawn uniformly from its range, on the generator's device
        (with ``antithetic``, half of them, and their twins)."""
        if self.antithetic and batch % 2:
            raise ValueError(f"antithetic camera sampling draws pairs: the batch must be even, got {batch}")
        n = batch // 2 if self.antithetic else batch

        def uniform(bounds: tuple[float, float]) -> Tensor:
            lo, hi = bounds
            return lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)

        elevation, azimuth, distance, fovy = (uniform(r) for r in (self.elevation_deg, self.azimuth_deg,
                                                                   self.distance, self.fovy_deg))
        if self.antithetic:
            twin = torch.remainder(azimuth + 360.0, 360.0) - 180.0  # azimuth + 180, back in [-180, 180)
            elevation, azimuth, distance, fovy = (torch.cat(p) for p in ((elevation, elevation), (azimuth, twin),
                                                                         (distance, distance), (fovy, fovy)))
        return orbit_cameras(elevation, azimuth, distance, fovy, size)

