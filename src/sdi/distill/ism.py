"""ISM (LucidDreamer, Liang et al. CVPR 2024): interval score matching.

kappa comes from unconditional DDIM inversion of x0 to s = t - delta with large strides; x_t is
one more DDIM step from x_s to t, and the subtracted term is eps_theta(x_s, empty) instead of kappa.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdi.diffusion.ddim import ddim_invert, ddim_step
from sdi.diffusion.guidance import eps_fn_for
from sdi.diffusion.parametrization import eps_from_x0
from sdi.diffusion.schedules import level_grid
from sdi.distill.noise import Noise, NoiseQuery
from sdi.distill.rule import Rule
from sdi.distill.timesteps import Levels, RandomT, to_level


@dataclass(frozen=True)
class IntervalT:
    """t ~ U(lo, hi) and s = t - delta (LucidDreamer: delta_t = 50 of 1000)."""

    lo: float = 0.02
    hi: float = 0.98
    delta: float = 0.05

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        t = RandomT(self.lo + self.delta, self.hi)(step, total, num_train, generator).t
        return Levels(t, max(t - to_level(self.delta, num_train), 0))


@dataclass(frozen=True)
class IntervalNoise:
    """Unconditional inversion 0 -> s in strides of ``stride`` (at most ``max_steps``), then x_s -> x_t."""

    stride: float = 0.2
    max_steps: int = 5

    def __call__(self, q: NoiseQuery) -> Noise:
        ac = q.denoiser.alphas_cumprod
        eps_u = eps_fn_for(q.denoiser, "", 1.0, q.cameras)
        steps = min(max(math.ceil(q.t / (self.stride * len(ac))), 1), self.max_steps)
        x_s = ddim_invert(eps_u, q.x0, level_grid(ac, -1, q.t, steps))
        eps_s = eps_u(x_s, torch.full((len(x_s),), q.t))
        a_s, a_t = ac[q.t].to(q.x0), ac[q.t_update].to(q.x0)
        x_t = ddim_step(x_s, eps_s, a_s, a_t)
        return Noise(eps_from_x0(x_t, q.x0, a_t), baseline=eps_s)


def ism(cfg: float = 7.5, delta: float = 0.05) -> Rule:
    """ISM with LucidDreamer's interval (delta_t = 50) and inversion stride (200, at most 5 steps)."""
    return Rule("ism", IntervalT(delta=delta), IntervalNoise(), cfg)
