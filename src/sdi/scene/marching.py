"""Two-pass volume rendering: densities without gradients first, then gradients only where they matter.

The single-pass renderer (``renderer._render_rays``) evaluates the field with gradients at every
sample inside an occupied cell: behind an opaque surface those samples have transmittance ~0 yet
cost a full forward and backward, and with 512 samples per ray they are most of them. Here (as
nerfacc's ``OccGridEstimator.sampling`` with ``early_stop_eps`` and ``alpha_thre``):

1. **Density pass, no gradients.** The candidate samples (in the box, in occupied cells) are marched
   front to back in ``segments`` blocks; after each block, rays whose transmittance T fell below
   ``early_stop`` stop (early ray termination). Samples never evaluated keep density 0: their weights
   are below ``early_stop``.
2. **Gradient pass.** The samples with T_i > ``early_stop`` and alpha_i > ``min_alpha`` are evaluated
   again, with gradients, exactly as the single pass evaluates its candidates (``_render_samples``);
   the other samples enter the weights with their first-pass densities, as constants.

Kept samples get the single pass's values (same points, same field). The rendering differs only by
the weights past early termination (each below ``early_stop``); the gradient also misses the terms of
samples with alpha <= ``min_alpha`` (none with the default 0). Each block and the gradient pass cost one
host sync each (the ``nonzero`` packing their samples), plus the single pass's one for shading.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sdi.scene.occupancy import OccupancyGrid
from sdi.scene.renderer import (
    Field,
    _candidate_mask,
    _Options,
    _render_samples,
    ray_aabb,
    render_weights,
    stratified_samples,
)


@torch.no_grad()
def march_densities(density_fn, origins: Tensor, dirs: Tensor, t_mid: Tensor, dt: Tensor, candidates: Tensor,
                    segments: int, early_stop: float) -> tuple[Tensor, int]:
    """Densities (R, S) of the candidate samples (R, S) along rays (R, 3), evaluated front to back in
    ``segments`` blocks; a ray stops once its transmittance is below ``early_stop``. Returns them and the
    number of points evaluated."""
    n_rays, s = t_mid.shape
    sigmas = t_mid.new_zeros(n_rays, s)
    optical_depth = t_mid.new_zeros(n_rays)  # sum sigma dt over the blocks done: T = exp(-depth)
    evaluated, block = 0, -(-s // max(segments, 1))
    for start in range(0, s, block):
        width = min(block, s - start)
        alive = optical_depth < -math.log(early_stop)
        idx = (candidates[:, start:start + width] & alive[:, None]).reshape(-1).nonzero().squeeze(1)
        ray, col = idx // width, idx % width + start
        sigmas[ray, col] = density_fn(origins[ray] + dirs[ray] * t_mid[ray, col, None])
        optical_depth += (sigmas[:, start:start + width] * dt[:, start:start + width]).sum(-1)
        evaluated += int(idx.numel())
    return sigmas, evaluated


def render_rays_two_pass(field: Field, background: nn.Module, origins: Tensor, dirs: Tensor, lights: Tensor | None,
                         generator: torch.Generator | None, occupancy: OccupancyGrid | None, opt: _Options) -> dict:
    """Render flat rays (R, 3) in two passes (module docstring); the outputs of ``renderer._render_rays``."""
    s = opt.num_samples
    near, far = ray_aabb(origins, dirs, opt.bound)
    t0, t1 = stratified_samples(near, far, s, generator, opt.perturb)
    t_mid, dt = 0.5 * (t0 + t1), t1 - t0
    candidates = _candidate_mask(origins, dirs, t_mid, far > near, occupancy)
    sigmas, n_density = march_densities(field.density, origins, dirs, t_mid, dt, candidates, opt.segments,
                                        opt.early_stop)
    _, trans, alphas = render_weights(t0, t1, sigmas)
    idx = ((trans > opt.early_stop) & (alphas > opt.min_alpha)).reshape(-1).nonzero().squeeze(1)
    res = _render_samples(field, background, origins, dirs, lights, t0, t1, idx, sigmas.reshape(-1), opt)
    res["n_evaluated"] += n_density
    return res
