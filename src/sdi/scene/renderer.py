"""Volume rendering as pure functions (nerfacc style); the field is passed in as a callback.

Notation: R rays, S samples per ray, B views of H x W pixels (R = B H W).
``alpha_i = 1 - exp(-sigma_i dt_i)``, ``T_i = exp(-sum_{j<i} sigma_j dt_j)``, ``w_i = T_i alpha_i``
(NeRF Eq. 3). Shading follows DreamFusion (Sec. 3.1): albedo, lambertian and textureless.

Timings: 4 views x 64^2, GridField 48^3 at its initial blob, forward + backward of
rgb.mean() (+ orientation and convexity losses when normals are on); torch 2.13, one thread,
best of 5 on a shared 2-core machine (load ~4, so +-30%), in ms:

===========================  ==========  ===========  ===========
samples per ray              48, dense   48, occupied  64, occupied
===========================  ==========  ===========  ===========
albedo, no normals           216         92           123
lambertian, field normals    312         163          215
lambertian, autograd         408         240          398
lambertian, finite diff.     427         234          312
===========================  ==========  ===========  ===========

The occupancy grid (32^3, initial blob: 15% of cells occupied) cuts the evaluated points from
786k to 212k and the time 1.5-2.3x; on a trained, sharper object it skips more. Normals: the
GridField's interpolated gradient grid ("field", the "auto" default for it) is the cheapest;
autograd with create_graph (double backward through grid_sample) and central finite
differences (6 extra density evaluations) cost about the same on the grid; on the hash grid
finite differences are ~2x slower than autograd (18 s vs 8 s per pass: use a GPU). With two
threads under contention the same passes took 1.5-3x longer than with one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdi.scene.fields import FieldOutput
from sdi.scene.occupancy import OccupancyGrid

Shading = Literal["albedo", "lambertian", "textureless"]
SHADING_MODES: tuple[Shading, ...] = ("albedo", "lambertian", "textureless")
"""The order of the weights of a shading mix (see ``shade``)."""
Strategy = Literal["single_pass", "two_pass"]


class Field(Protocol):
    """What the renderer needs from a field."""

    def __call__(self, points: Tensor) -> FieldOutput: ...

    def density(self, points: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# Rays and samples
# --------------------------------------------------------------------------------------------


def ray_aabb(origins: Tensor, dirs: Tensor, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """Slab test of rays (..., 3) against [-bound, bound]^3 -> near, far (...,).

    Near is clamped at 0 (no samples behind the camera). Rays that miss the box get
    ``near == far`` (zero-length, so all their weights are 0); test ``far > near`` for hits."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    far = torch.maximum(far, near)
    return near, far


def stratified_samples(
    near: Tensor, far: Tensor, n: int, generator: torch.Generator | None = None, perturb: bool = True
) -> tuple[Tensor, Tensor]:
    """n equal intervals per ray between near and far (R,) -> t_starts, t_ends (R, n).

    With ``perturb`` every ray's intervals are shifted by one uniform offset in [-dt/2, dt/2), so
    each sample position (interval midpoint) is uniform within its own bin of [near, far]
    (stratified sampling, NeRF Eq. 2). Without it, intervals tile [near, far] exactly and the
    samples sit at the bin centres."""
    dt = (far - near) / n  # (R,)
    i = torch.arange(n, device=near.device, dtype=near.dtype)
    u = torch.zeros_like(near)
    if perturb:
        u = torch.rand(near.shape, generator=generator, device=near.device, dtype=near.dtype) - 0.5
    t_starts = near[..., None] + (i + u[..., None]) * dt[..., None]
    return t_starts, t_starts + dt[..., None]


def render_weights(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Volume rendering weights from densities (..., S) -> weights, transmittance, alphas (..., S).

    alpha_i = 1 - exp(-sigma_i dt_i); T_i = exp(-sum_{j<i} sigma_j dt_j) (exclusive cumsum in log
    space, equal to the exclusive cumprod of 1 - alpha); w_i = T_i alpha_i."""
    tau = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-tau)
    excl = torch.cumsum(tau, dim=-1) - tau
    trans = torch.exp(-excl)
    return trans * alphas, trans, alphas


# --------------------------------------------------------------------------------------------
# Normals and shading
# --------------------------------------------------------------------------------------------


def normals_autograd(density_fn, points: Tensor) -> Tensor:
    """(N, 3) -> (N, 3) normals -normalize(grad_x sigma) by autograd, with create_graph so that
    losses on the normals reach the field's parameters (double backward)."""
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(density_fn(x).sum(), x, create_graph=True)
    return -F.normalize(grad, dim=-1)


def normals_finite_difference(density_fn, points: Tensor, eps: float = 1e-2) -> Tensor:
    """(N, 3) -> (N, 3) normals from central differences of the density (threestudio's
    "finite_difference" normals, eps = 0.01): 6 extra density evaluations."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # (3, 3)
    shifted = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (N, 6, 3)
    d = density_fn(shifted.view(-1, 3)).view(-1, 6)
    grad = (d[:, :3] - d[:, 3:]) / (2 * eps)
    return -F.normalize(grad, dim=-1)


def normals_forward_difference(density_fn, points: Tensor, density: Tensor, eps: float = 1e-2) -> Tensor:
    """(N, 3) -> (N, 3) normals from forward differences of the density, given its value ``density`` (N,) at
    the points: 3 extra density evaluations (half of central differences, first-order accurate)."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    d = density_fn((points[:, None] + offsets).view(-1, 3)).view(-1, 3)
    return -F.normalize((d - density[:, None]) / eps, dim=-1)


NormalsMethod = Literal["auto", "field", "autograd", "finite_difference", "forward_difference"]


def field_normals(field: Field, points: Tensor, method: NormalsMethod = "auto", density: Tensor | None = None) -> Tensor:
    """(N, 3) -> (N, 3) unit normals by ``method``: "field" calls ``field.normals`` (GridField's
    interpolated gradient grid), "autograd" / "finite_difference" (central) / "forward_difference" (needs
    ``density`` (N,) at the points) differentiate ``field.density``; "auto" is "field" when the field has a
    ``normals`` method, else "autograd"."""
    if method == "auto":
        method = "field" if hasattr(field, "normals") else "autograd"
    if method == "field":
        return field.normals(points)
    if method == "autograd":
        return normals_autograd(field.density, points)
    if method == "finite_difference":
        return normals_finite_difference(field.density, points)
    if method == "forward_difference":
        if density is None:
            raise ValueError("forward_difference normals need the density at the points")
        return normals_forward_difference(field.density, points, density)
    raise ValueError(f"unknown normals method {method!r}; use 'auto', 'field', 'autograd', 'finite_difference' "
                     "or 'forward_difference'")


def shade(
    albedo: Tensor,
    normals: Tensor | None,
    points: Tensor,
    light_positions: Tensor | None,
    shading: Shading | Tensor,
    ambient: float = 0.1,
    diffuse: float = 0.9,
) -> Tensor:
    """Per-sample colour (N, 3) (DreamFusion Sec. 3.1): "albedo" returns albedo;
    "lambertian" albedo * (ambient + diffuse * max(0, n . l)), l = normalize(light - x);
    "textureless" the same lighting on a white albedo. light_positions is (N, 3) per sample.
    ``shading`` may also be a (3,) tensor of weights over SHADING_MODES: one-hot weights drawn on the
    device pick a mode without the host knowing which (bit-identical to passing its name)."""
    if isinstance(shading, Tensor):
        lit = shade(albedo, normals, points, light_positions, "textureless", ambient, diffuse)
        return shading[0] * albedo + shading[1] * (albedo * lit) + shading[2] * lit
    if shading == "albedo":
        return albedo
    if shading not in ("lambertian", "textureless"):
        raise ValueError(f"unknown shading {shading!r}; use 'albedo', 'lambertian' or 'textureless'")
    if normals is None or light_positions is None:
        raise ValueError(f"shading={shading!r} needs normals and light_positions (B, 3)")
    light_dir = F.normalize(light_positions - points, dim=-1)
    lit = ambient + diffuse * (normals * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    base = torch.ones_like(albedo) if shading == "textureless" else albedo
    return base * lit


# --------------------------------------------------------------------------------------------
# Render
# --------------------------------------------------------------------------------------------


@dataclass
class RenderOutput:
    """Images, plus the per-sample quantities the regularizers need (R = B H W rays, S samples
    per ray, K shaded samples: those with weight > ``min_weight``, packed as in nerfacc)."""

    rgb: Tensor
    """(B, 3, H, W) composited colour over the background, in [0, 1]."""
    opacity: Tensor
    """(B, 1, H, W) accumulated opacity sum_i w_i."""
    depth: Tensor
    """(B, 1, H, W) expected distance sum_i w_i t_i (not divided by opacity; 0 on empty rays)."""
    normals: Tensor | None
    """(B, 3, H, W) composited world-space normals sum_i w_i n_i (None when rendered without normals)."""
    weights: Tensor
    """(B, H, W, S) weights w_i of every sample (0 where skipped)."""
    t_mids: Tensor
    """(B, H, W, S) distance of each sample (interval midpoint) along its ray."""
    directions: Tensor
    """(B, H, W, 3) unit ray directions (camera -> scene)."""
    ray_indices: Tensor
    """(K,) flat index into the B H W rays of each shaded sample."""
    sample_weights: Tensor
    """(K,) weight of each shaded sample."""
    sample_normals: Tensor | None
    """(K, 3) unit normal of each shaded sample (None when rendered without normals)."""
    n_evaluated: int = 0
    """Points at which the field was evaluated (density passes; measures empty-space skipping)."""
    n_with_grad: int = 0
    """Of those, points evaluated with gradients (all of them in a single pass)."""
    n_shaded: int = 0
    """Samples shaded (albedo, normals, colour): K."""


@dataclass(frozen=True)
class _Options:
    num_samples: int
    shading: Shading | Tensor
    normals: NormalsMethod | None
    bound: float
    perturb: bool
    min_weight: float
    strategy: Strategy = "single_pass"
    early_stop: float = 1e-4
    segments: int = 4
    min_alpha: float = 0.0


def _as_rays(cameras_or_rays) -> tuple[Tensor, Tensor]:
    """Cameras (anything with ``.rays()``) or a tuple (origins, dirs), each (B, H, W, 3)."""
    if hasattr(cameras_or_rays, "rays"):
        cameras_or_rays = cameras_or_rays.rays()
    origins, dirs = cameras_or_rays
    if origins.dim() != 4 or origins.shape != dirs.shape or origins.shape[-1] != 3:
        shapes = f"{tuple(origins.shape)}, {tuple(dirs.shape)}"
        raise ValueError(f"render needs Cameras or (origins, dirs) each (B, H, W, 3); got {shapes}")
    return origins, F.normalize(dirs, dim=-1)


@torch.no_grad()
def _candidate_mask(origins: Tensor, dirs: Tensor, t_mid: Tensor, hit: Tensor,
                    occupancy: OccupancyGrid | None) -> Tensor:
    """(R, S) bool: the samples worth evaluating, on rays hitting the box and, with an occupancy grid,
    inside occupied cells."""
    keep = hit[:, None].expand_as(t_mid)
    if occupancy is not None:
        pts = origins[:, None] + dirs[:, None] * t_mid[..., None]
        keep = keep & occupancy.occupied(pts.view(-1, 3)).view(t_mid.shape)
    return keep


def _candidates(origins: Tensor, dirs: Tensor, t_mid: Tensor, hit: Tensor, occupancy: OccupancyGrid | None) -> Tensor:
    """Flat indices (K,) into the (R, S) samples of ``_candidate_mask``."""
    return _candidate_mask(origins, dirs, t_mid, hit, occupancy).reshape(-1).nonzero().squeeze(1)


def _composite(values: Tensor, weights: Tensor, rays: Tensor, n_rays: int) -> Tensor:
    """sum_i w_i v_i per ray for packed samples: values (K, C), weights (K,), rays (K,) -> (R, C)."""
    return values.new_zeros(n_rays, values.shape[1]).index_add(0, rays, weights[:, None] * values)


def _render_rays(field: Field, background: nn.Module, origins: Tensor, dirs: Tensor, lights: Tensor | None,
                 generator: torch.Generator | None, occupancy: OccupancyGrid | None, opt: _Options) -> dict:
    """Render flat rays origins, dirs, lights (R, 3): density pass on candidate samples, weights,
    then albedo, normals and shading only on samples with weight > min_weight."""
    n_rays, s = origins.shape[0], opt.num_samples
    near, far = ray_aabb(origins, dirs, opt.bound)
    t0, t1 = stratified_samples(near, far, s, generator, opt.perturb)
    idx = _candidates(origins, dirs, 0.5 * (t0 + t1), far > near, occupancy)
    return _render_samples(field, background, origins, dirs, lights, t0, t1, idx, t0.new_zeros(n_rays * s), opt)


THREAD_ALIGNMENT = 64
"""The rows of every field call are padded to a multiple of this (``field_at``)."""


def field_at(field: Field, points: Tensor) -> FieldOutput:
    """``field(points)``, evaluated on ``points`` padded with zeros to a multiple of ``THREAD_ALIGNMENT`` rows and
    cut back. On the CPU torch gives each of T threads ceil(n / T) elements of an elementwise op over n > 32768 and
    runs the last ones of each share with scalar code, whose exp and sigmoid can differ from the vector code in the
    last bit (measured: the albedo's sigmoid, 1-2 of 85668 values, 1 vs 2 threads). With n a multiple of 64 both
    shares of 2 threads are whole vector blocks, so 1 and 2 threads agree bit for bit (tests/test_threads.py); the
    padded rows get no gradient and cost nothing measurable."""
    k = points.shape[0]
    pad = -k % THREAD_ALIGNMENT
    if pad == 0:
        return field(points)
    out = field(torch.cat([points, points.new_zeros(pad, 3)]))
    return replace(out, density=out.density[:k], albedo=out.albedo[:k])


def _render_samples(field: Field, background: nn.Module, origins: Tensor, dirs: Tensor, lights: Tensor | None,
                    t0: Tensor, t1: Tensor, idx: Tensor, other_sigmas: Tensor, opt: _Options) -> dict:
    """Evaluate the field with gradients at the samples ``idx`` (K,) (flat indices into the (R, S)
    intervals t0, t1); every other sample keeps its density from ``other_sigmas`` (R S,), a constant.
    Weights from all densities; albedo, normals and shading only where w > min_weight."""
    n_rays, s = t0.shape
    t_mid = 0.5 * (t0 + t1)
    ray = idx // s
    pts = origins[ray] + dirs[ray] * t_mid.reshape(-1)[idx, None]
    out = field_at(field, pts)
    sigmas = other_sigmas.index_put((idx,), out.density).view(n_rays, s)
    w, _, _ = render_weights(t0, t1, sigmas)
    w_k = w.reshape(-1)[idx]
    vis = (w_k.detach() > opt.min_weight).nonzero().squeeze(1)
    ray_v, pts_v, w_v = ray[vis], pts[vis], w_k[vis]
    nrm = None
    if opt.normals is not None:
        centre = out.density[vis] if opt.normals == "forward_difference" else None
        nrm = field_normals(field, pts_v, opt.normals, centre)
    light_v = None if lights is None else lights[ray_v]
    color = shade(out.albedo[vis], nrm, pts_v, light_v, opt.shading)
    opacity = w.sum(-1, keepdim=True)
    rgb = _composite(color, w_v, ray_v, n_rays) + (1.0 - opacity) * background(dirs)
    res = dict(rgb=rgb, opacity=opacity, depth=(w * t_mid).sum(-1, keepdim=True), weights=w, t_mids=t_mid,
               ray_indices=ray_v, sample_weights=w_v, n_evaluated=int(idx.numel()), n_with_grad=int(idx.numel()),
               n_shaded=int(vis.numel()))
    if nrm is not None:
        res.update(normals=_composite(nrm, w_v, ray_v, n_rays), sample_normals=nrm)
    return res


def render(
    field: Field,
    background: nn.Module,
    cameras_or_rays,
    num_samples: int = 48,
    shading: Shading | Tensor = "albedo",
    light_positions: Tensor | None = None,
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
    chunk: int | None = None,
    normals: NormalsMethod | None = "auto",
    bound: float = 1.0,
    perturb: bool = True,
    min_weight: float = 1e-4,
    strategy: Strategy = "single_pass",
    early_stop: float = 1e-4,
    segments: int = 4,
    min_alpha: float = 0.0,
) -> RenderOutput:
    """Volume-render B views: ``cameras_or_rays`` is a Cameras (``.rays()``) or (origins, dirs)
    each (B, H, W, 3); ``light_positions`` (B, 3) is one point light per view for lambertian /
    textureless shading (``shading``: a mode, or a tensor mix as in ``shade``). ``normals=None`` skips
    normals (no normal map, no normal losses). ``chunk`` rays at a time bounds memory (all chunks stay
    in the autograd graph). Albedo, normals and shading are computed only where w_i > ``min_weight``.
    ``strategy``: "single_pass" evaluates every candidate sample with gradients; "two_pass"
    (``sdi.scene.marching``) finds the densities without gradients first, marching ``segments`` blocks of
    samples front to back and stopping rays whose transmittance fell below ``early_stop``, then
    re-evaluates with gradients only the samples before that point with alpha > ``min_alpha``."""
    origins, dirs = _as_rays(cameras_or_rays)
    b, h, w, _ = origins.shape
    lights = None
    if light_positions is not None:
        if light_positions.shape != (b, 3):
            got = tuple(light_positions.shape)
            raise ValueError(f"light_positions must be (B, 3) = ({b}, 3), one light per view; got {got}")
        lights = light_positions[:, None, None, :].expand(b, h, w, 3).reshape(-1, 3)
    opt = _Options(num_samples, shading, normals, bound, perturb, min_weight, strategy, early_stop, segments, min_alpha)
    render_rays = _render_rays
    if strategy == "two_pass":
        from sdi.scene.marching import render_rays_two_pass as render_rays
    elif strategy != "single_pass":
        raise ValueError(f"unknown render strategy {strategy!r}; use 'single_pass' or 'two_pass'")
    flat_o, flat_d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    step = chunk or flat_o.shape[0]
    parts = []
    for s in range(0, flat_o.shape[0], step):
        sl = slice(s, s + step)
        lp = None if lights is None else lights[sl]
        part = render_rays(field, background, flat_o[sl], flat_d[sl], lp, generator, occupancy, opt)
        part["ray_indices"] = part["ray_indices"] + s
        parts.append(part)
    return _assemble(parts, b, h, w, dirs)


def _assemble(parts: list[dict], b: int, h: int, w: int, dirs: Tensor) -> RenderOutput:
    """Concatenate per-chunk results; per-ray values become images, per-sample ones (B, H, W, S)."""

    def cat(key):
        return torch.cat([p[key] for p in parts], dim=0) if key in parts[0] else None

    def image(x):
        return None if x is None else x.view(b, h, w, -1).permute(0, 3, 1, 2)

    return RenderOutput(
        rgb=image(cat("rgb")),
        opacity=image(cat("opacity")),
        depth=image(cat("depth")),
        normals=image(cat("normals")),
        weights=cat("weights").view(b, h, w, -1),
        t_mids=cat("t_mids").view(b, h, w, -1),
        directions=dirs,
        ray_indices=cat("ray_indices"),
        sample_weights=cat("sample_weights"),
        sample_normals=cat("sample_normals"),
        n_evaluated=sum(p["n_evaluated"] for p in parts),
        n_with_grad=sum(p["n_with_grad"] for p in parts),
        n_shaded=sum(p["n_shaded"] for p in parts),
    )
