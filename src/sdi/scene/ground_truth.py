"""Deterministic ground-truth renders of catalog objects by sphere tracing their SDFs.

Shading is Lambertian under one light fixed in world space (``LIGHT_DIRECTION``, from above, front
and right, i.e. roughly where the cameras are): rgb = albedo * (AMBIENT + DIFFUSE * max(0, n . l)),
composited over a white background. It depends only on the surface point, never on the camera, so
a view-independent radiance field can match it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from sdi.scene.cameras import Cameras
from sdi.scene.catalog import BOUNDING_RADIUS
from sdi.threads import torch_threads


class Surface(Protocol):
    """What is rendered: a signed distance and an albedo (a ``CatalogObject`` or one of its ``Variant``s)."""

    def sdf(self, points: Tensor) -> Tensor: ...

    def albedo(self, points: Tensor) -> Tensor: ...

LIGHT_DIRECTION = (0.4, 0.7, 0.6)
"""Direction towards the light, world space (normalized before use)."""
AMBIENT = 0.6
DIFFUSE = 0.4
TRACE_STEPS = 64
"""Sphere-tracing iterations; then ``REFINE_STEPS`` more on hits only, to settle on the surface."""
REFINE_STEPS = 4
HIT_EPSILON = 1e-3
"""A ray hits when |sdf| falls below this (world units; a 64x64 pixel is about 0.025)."""
NORMAL_EPSILON = 1e-3
"""Step of the central differences that give normals."""


@dataclass(frozen=True)
class GroundTruthRender:
    """Renders of one object; background pixels have mask 0, rgb 1 (white), normals 0, depth 0."""

    rgb: Tensor
    """(B, 3, H, W) shaded color in [0, 1] over a white background."""
    mask: Tensor
    """(B, 1, H, W) coverage: {0, 1}, or fractional when supersampled."""
    normals: Tensor
    """(B, 3, H, W) unit world-space normals on the object (coverage-weighted mean when supersampled)."""
    depth: Tensor
    """(B, 1, H, W) distance along the ray to the surface."""


def over_background(rgb: Tensor, mask: Tensor, background: Tensor | None) -> Tensor:
    """Renders over white, rgb (..., B, 3, H, W) with coverage mask (B, 1, H, W), recomposited over one colour per
    view, background (B, 3) in [0, 1] (``Cameras.background``; None: white, rgb unchanged)."""
    if background is None:
        return rgb
    return rgb + (1 - mask) * (background.to(rgb)[:, :, None, None] - 1)


def _bounding_interval(origins: Tensor, directions: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (N,) of unit rays through the sphere of ``radius``; exit < entry on a miss."""
    b = (origins * directions).sum(-1)
    c = origins.pow(2).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    t_near, t_far = (-b - root).clamp(min=0), -b + root
    return t_near, torch.where(disc > 0, t_far, t_near - 1)


def sphere_trace(obj: Surface, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Hit mask (N,) and distance t (N,) along unit rays (N, 3) to the object's surface (Hart 1996)."""
    t, t_exit = _bounding_interval(origins, directions, BOUNDING_RADIUS + 0.02)  # a margin over the shapes' own bound
    idx = torch.nonzero(t <= t_exit).squeeze(1)
    o, d, ti, te = origins[idx], directions[idx], t[idx], t_exit[idx]
    for step in range(TRACE_STEPS):
        dist = obj.sdf(o + ti[:, None] * d)
        ti = ti + dist
        if step % 8 == 7:  # drop converged and escaped rays now and then: most settle in a few steps
            t[idx] = ti
            keep = (dist.abs() > HIT_EPSILON / 8) & (ti <= te)
            idx, o, d, ti, te = idx[keep], o[keep], d[keep], ti[keep], te[keep]
    t[idx] = ti
    t = torch.minimum(t, t_exit + 1)
    for _ in range(REFINE_STEPS):
        t = t + obj.sdf(origins + t[:, None] * directions).clamp(min=-HIT_EPSILON, max=HIT_EPSILON)
    hit = (obj.sdf(origins + t[:, None] * directions).abs() < HIT_EPSILON) & (t <= t_exit)
    return hit, t


def sdf_normals(obj: Surface, points: Tensor) -> Tensor:
    """Unit normals (N, 3): the normalized SDF gradient, by central differences."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * NORMAL_EPSILON
    grad = torch.stack([obj.sdf(points + o) - obj.sdf(points - o) for o in offsets], dim=-1)
    return torch.nn.functional.normalize(grad, dim=-1)


def shade(albedo: Tensor, normals: Tensor) -> Tensor:
    """Lambertian color (N, 3): albedo * (AMBIENT + DIFFUSE * max(0, n . l))."""
    light = torch.nn.functional.normalize(normals.new_tensor(LIGHT_DIRECTION), dim=0)
    return albedo * (AMBIENT + DIFFUSE * (normals @ light).clamp(min=0))[:, None]


def _trace_and_paint(shapes: Sequence[Surface], origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Per ray (N, 3): geometry (N, 5) = mask, normal, depth, and colours (K, N, 3) over white, one per surface of
    ``shapes``, which all share the first one's geometry (one sphere trace; normals and K albedos at the hits only)."""
    hit, t = sphere_trace(shapes[0], origins, directions)
    idx = torch.nonzero(hit).squeeze(1)
    points = origins[idx] + t[idx, None] * directions[idx]
    normals = sdf_normals(shapes[0], points)
    geometry = origins.new_zeros(len(origins), 5)
    geometry[idx] = torch.cat([torch.ones_like(t[idx, None]), normals, t[idx, None]], dim=-1)
    rgb = origins.new_ones(len(shapes), len(origins), 3)
    rgb[:, idx] = torch.stack([shade(surface.albedo(points), normals) for surface in shapes])
    return geometry, rgb


def render_ground_truth(obj: Surface, cameras: Cameras, supersample: int = 1) -> GroundTruthRender:
    """Sphere-traced renders (B, ., H, W) of ``obj``; ``supersample`` s traces s x s rays per pixel."""
    return render_shared_geometry([obj], cameras, supersample)[0]


def render_shared_geometry(shapes: Sequence[Surface], cameras: Cameras, supersample: int = 1) -> list[GroundTruthRender]:
    """``render_ground_truth`` of each of ``shapes`` (e.g. a prompt's variants), which share the first one's geometry:
    traced once, painted K times, on one thread (bit-identical whatever torch's thread count)."""
    if supersample < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample}")
    s, B, H, W = supersample, len(cameras), cameras.height, cameras.width
    fine = Cameras(cameras.c2w.float(), cameras.fovy.float(), H * s, W * s)
    origins, directions = fine.rays()
    with torch_threads(1):  # the sines and roots of tens of thousands of rays would round by the thread count
        geometry, rgb = _trace_and_paint(shapes, origins.reshape(-1, 3), directions.reshape(-1, 3))

    def image(per_ray: Tensor) -> Tensor:  # (..., B * H s * W s, C) -> (prod(...) * B, C, H, W), box-filtered
        channels = per_ray.shape[-1]
        out = per_ray.reshape(-1, H * s, W * s, channels).permute(0, 3, 1, 2)
        return torch.nn.functional.avg_pool2d(out, s) if s > 1 else out

    mask, normals, depth = image(geometry).split([1, 3, 1], dim=1)
    normals = torch.nn.functional.normalize(normals, dim=1)  # zero where uncovered
    depth = depth / mask.clamp(min=1e-8) * (mask > 0)
    colours = image(rgb).clamp(0, 1).reshape(len(shapes), B, 3, H, W)
    return [GroundTruthRender(rgb=c, mask=mask, normals=normals, depth=depth) for c in colours]
