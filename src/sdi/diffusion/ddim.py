"""DDIM (Song et al. 2021) as pure functions: one step, sampling and inversion over a Grid.

``eps_fn(x, t) -> eps`` is any noise predictor, guidance already folded in (see ``guidance.py``).
Sampling and inversion are the same loop on a descending or an ascending Grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from sdi.diffusion.noise_sampler import NoiseSampler
from sdi.diffusion.parametrization import add_noise, x0_from_eps
from sdi.diffusion.schedules import Grid

EpsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DDIMStep:
    """What step ``i`` of a DDIM loop did, for a callback: it evaluated the model at ``grid.timesteps[i]``
    on ``x`` (predicting ``eps`` and ``x0``) and moved to ``x_next`` (entropy noise of std ``noise_std``
    x ``step_noise`` included; ``noise_std`` is None without it)."""

    i: int
    x: Tensor
    eps: Tensor
    x0: Tensor
    x_next: Tensor
    noise_std: Tensor | None = None


Callback = Callable[[DDIMStep], None]


def ddim_step(x: Tensor, eps: Tensor, alpha_from: Tensor, alpha_to: Tensor) -> Tensor:
    """Deterministic DDIM transfer of x from level a_from to a_to with noise estimate eps (DDIM Eq. 12, eta = 0)."""
    return add_noise(x0_from_eps(x, eps, alpha_from), eps, alpha_to)


def posterior_std(alpha_low: Tensor, alpha_high: Tensor) -> Tensor:
    """Std of the DDPM posterior between two levels (a_lo < a_hi): sqrt((1 - a_hi)/(1 - a_lo) (1 - a_lo/a_hi))."""
    return ((1 - alpha_high) / (1 - alpha_low) * (1 - alpha_low / alpha_high)).clamp(min=0).sqrt()


def ddim_loop(
    eps_fn: EpsFn,
    x: Tensor,
    grid: Grid,
    callback: Callback | None = None,
    step_noise: float = 0.0,
    noise: NoiseSampler | None = None,
) -> Tensor:
    """Walk x along ``grid``; ``step_noise`` > 0 adds (``step_noise`` z) x the DDPM posterior std between
    the two levels after every step, z the next draw of ``noise`` (the authors' SDI entropy term)."""
    if step_noise and noise is None:
        raise ValueError("step_noise needs a noise sampler")
    for i in range(len(grid)):
        a_from, a_to = grid.alphas[i], grid.alphas[i + 1]
        t = grid.timesteps[i].expand(x.shape[0])
        eps = eps_fn(x, t)
        x_next, std = ddim_step(x, eps, a_from, a_to), None
        if step_noise:
            std = posterior_std(torch.minimum(a_from, a_to), torch.maximum(a_from, a_to))
            x_next = x_next + (step_noise * noise(x_next)) * std
        if callback is not None:
            callback(DDIMStep(i, x, eps, x0_from_eps(x, eps, a_from), x_next, std))
        x = x_next
    return x


def ddim_sample(eps_fn: EpsFn, x_t: Tensor, grid: Grid, callback: Callback | None = None) -> Tensor:
    """Deterministic DDIM sampling from x_t down a descending grid; returns the final sample."""
    if len(grid) > 1 and grid.timesteps[0] < grid.timesteps[-1]:
        raise ValueError("ddim_sample needs a descending grid (see sampling_grid)")
    return ddim_loop(eps_fn, x_t, grid, callback)


def ddim_invert(
    eps_fn: EpsFn,
    x0: Tensor,
    grid: Grid,
    callback: Callback | None = None,
    step_noise: float = 0.0,
    noise: NoiseSampler | None = None,
) -> Tensor:
    """DDIM inversion of a clean sample up an ascending grid (labelled at the destination as diffusers'
    DDIMInverseScheduler does, or at the source: ``source_grid``). Returns the noisy sample."""
    if len(grid) > 1 and grid.timesteps[0] > grid.timesteps[-1]:
        raise ValueError("ddim_invert needs an ascending grid (see inversion_grid)")
    return ddim_loop(eps_fn, x0, grid, callback, step_noise, noise)
