"""NFSD (Katzir et al., ICLR 2024, "Noise-Free Score Distillation"): drop the noise term of SDS,

    grad = w(t) [delta_D + s delta_C],   delta_C = eps(x_t, y) - eps(x_t, empty),
    delta_D = eps(x_t, empty)                            for t < 200 (of 1000),
    delta_D = eps(x_t, empty) - eps(x_t, negative)       otherwise,

with the negative prompt ``NFSD_NEGATIVE``. As an Eq. 10 update the rule's guided prediction at scale s is
eps_u + s delta_C = delta_D + s delta_C + (eps_u - delta_D), so the subtracted baseline is
0 for t < 200 and eps(x_t, negative) otherwise; kappa ~ N(0, I) only places x_t.

Priors without free-text prompts (the embedded exemplar priors know only their labels) take
``negative=""``: then delta_D = 0 for t >= 200 and NFSD is CSD there (the domain term vanishes), while
for t < 200 it is the SDS prediction without the noise subtracted. Say so when reporting such runs.

Cost: for t >= 200 one extra batched call (the negative branch at x_t): 2 batched calls, 3 branch
evaluations per step; for t < 200 none (SDS's cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdi.distill.csd import branch_eps, noised
from sdi.distill.noise import Noise, NoiseQuery
from sdi.distill.rule import Rule, Weighting
from sdi.distill.timesteps import RandomT

NFSD_NEGATIVE = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
"""The negative prompt of the NFSD paper's domain term."""


@dataclass(frozen=True)
class NoiseFree:
    """kappa ~ N(0, I); baseline 0 below ``switch`` (delta_D = eps_u), eps(x_t, negative) above it.
    Needs the rule's ``cfg`` to be the NFSD scale and its negative branch "" (``nfsd`` sets both)."""

    negative: str = NFSD_NEGATIVE
    """Prompt of the domain term for t >= switch ("" for priors without free text: delta_D = 0 there)."""
    switch: float = 0.2
    """Fraction of the diffusion time below which delta_D = eps(x_t, empty) (NFSD: t < 200 of 1000)."""

    def __call__(self, q: NoiseQuery) -> Noise:
        kappa = q.randn()
        if q.t_update < self.switch * len(q.denoiser.alphas_cumprod):
            return Noise(kappa, baseline=torch.zeros_like(kappa))
        return Noise(kappa, baseline=branch_eps(q, noised(q, kappa), self.negative))


def nfsd(
    cfg: float = 7.5,
    negative: str = NFSD_NEGATIVE,
    t_range: tuple[float, float] = (0.02, 0.98),
    weighting: Weighting = "sigma",
) -> Rule:
    """NFSD as an Eq. 10 rule: random t, grad = w(t) (delta_D + cfg delta_C). NFSD's paper uses cfg 7.5."""
    return Rule("nfsd", RandomT(*t_range), NoiseFree(negative), cfg, weighting)
