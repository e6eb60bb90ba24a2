"""CSD (Yu et al., ICLR 2024, "Text-to-3D with Classifier Score Distillation"): the classifier score alone,

    grad = w(t) s [eps_theta(x_t, y) - eps_theta(x_t, empty)],

written as the Eq. 10 update with a baseline instead of kappa: the update subtracts
``baseline = eps_theta(x_t, empty)`` from the rule's guided prediction eps_u + s (eps_c - eps_u), which
leaves exactly s (eps_c - eps_u). kappa ~ N(0, I) only places x_t; it is never subtracted.

Cost: one extra batched denoiser call per step (the unconditional branch at x_t, which ``distill_step``
computes again inside its guided call): 2 batched calls and 3 branch evaluations per step, SDS's 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdi.diffusion.parametrization import add_noise
from sdi.distill.noise import Noise, NoiseQuery
from sdi.distill.rule import Rule, Weighting
from sdi.distill.timesteps import RandomT


def noised(q: NoiseQuery, kappa: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a) x0 + sqrt(1 - a) kappa at the update's level, the input ``distill_step`` will use."""
    return add_noise(q.x0, kappa, q.denoiser.alphas_cumprod[q.t_update].to(q.x0))


def branch_eps(q: NoiseQuery, x_t: torch.Tensor, prompt: str) -> torch.Tensor:
    """eps_theta(x_t, prompt) at the update's level, one branch, no guidance."""
    t = torch.full((len(x_t),), q.t_update)
    with torch.no_grad():
        return q.denoiser.predict_eps(x_t, t, [prompt], q.cameras)[0]


@dataclass(frozen=True)
class ClassifierScore:
    """kappa ~ N(0, I); baseline eps_theta(x_t, empty), so that (guided eps at scale s) - baseline = s delta_C.
    Needs the rule's ``cfg`` to be the CSD scale and its negative branch to be "" (``csd`` sets both)."""

    def __call__(self, q: NoiseQuery) -> Noise:
        kappa = q.randn()
        return Noise(kappa, baseline=branch_eps(q, noised(q, kappa), ""))


def csd(scale: float = 7.5, t_range: tuple[float, float] = (0.02, 0.98), weighting: Weighting = "sigma") -> Rule:
    """CSD as an Eq. 10 rule: random t, grad = w(t) scale (eps_c - eps_u). Scale 7.5 compares with SDI's CFG."""
    return Rule("csd", RandomT(*t_range), ClassifierScore(), scale, weighting)
