"""The one update every score-distillation rule shares (paper Eq. 10)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from sdi.diffusion.guidance import guided_eps
from sdi.diffusion.parametrization import add_noise
from sdi.distill.noise import Noise, NoiseQuery
from sdi.distill.timesteps import Levels
from sdi.diffusion.denoiser import CameraBatch, Denoiser

Weighting = Literal["sigma", "one_minus_alpha", "one"]


def weight(alpha: Tensor, kind: Weighting) -> Tensor:
    """w(t): sigma(t) makes the update Eq. 10 (and SDI's 0.5 |x0 - x0_hat|^2 loss); 1 - a(t) is DreamFusion's."""
    if kind == "sigma":
        return ((1 - alpha) / alpha).sqrt()
    if kind == "one_minus_alpha":
        return 1 - alpha
    return torch.ones_like(alpha)


@dataclass(frozen=True)
class Rule:
    """A score-distillation rule = how t is chosen + how kappa is chosen (+ guidance and weighting)."""

    name: str
    """Short name used in outputs."""
    timesteps: Callable[..., Levels]
    """Schedule: (step, total, T, generator) -> Levels(t, t_kappa)."""
    noise: Callable[[NoiseQuery], Noise]
    """Estimator of kappa at level t_kappa."""
    cfg: float = 7.5
    """Forward classifier-free guidance scale."""
    weighting: Weighting = "sigma"
    """w(t) in front of the update."""
    negative: str = ""
    """Prompt of the guidance's negative branch ("" = unconditional)."""


@dataclass(frozen=True)
class Update:
    """What one distillation step produced; ``grad`` is d loss / d x0."""

    x0: Tensor
    grad: Tensor
    levels: Levels
    x_t: Tensor
    eps: Tensor
    noise: Noise

    @property
    def target(self) -> Tensor:
        """x0 - grad: the loss 0.5 |x0 - target.detach()|^2 has gradient ``grad`` (threestudio's trick)."""
        return self.x0 - self.grad


def distillation_loss(x0: Tensor, target: Tensor) -> Tensor:
    """0.5 mean((x0 - target.detach())^2) / B, the authors' SDI loss (threestudio ``stable_diffusion_sdi_guidance``):
    a mean over all B C H W elements, divided by the batch size once more. Its gradient is
    (x0 - target) / (B^2 C H W); the regularizer weights of the presets assume this scale."""
    return 0.5 * (x0 - target.detach()).pow(2).mean() / x0.shape[0]


def distill_step(
    rule: Rule,
    denoiser: Denoiser,
    x0: Tensor,
    step: int,
    total: int,
    prompt: str,
    generator: torch.Generator,
    state: dict,
    cameras: CameraBatch | None = None,
) -> Update:
    """One step of Eq. 10 on x0 (B, C, H, W): choose (t, kappa), predict, return w(t) (eps - kappa)."""
    ac = denoiser.alphas_cumprod
    levels = rule.timesteps(step, total, len(ac), generator)
    x0 = x0.detach()
    query = NoiseQuery(denoiser, x0, levels.t_kappa, levels.t, prompt, rule.cfg, cameras, generator, state)
    noise = rule.noise(query)
    alpha = ac[levels.t].to(x0)
    x_t = add_noise(x0, noise.kappa, alpha)
    with torch.no_grad():
        eps = guided_eps(denoiser, x_t, torch.full((len(x0),), levels.t), prompt, rule.cfg, cameras, rule.negative)
    state["last_eps"] = eps
    grad = weight(alpha, rule.weighting) * (eps - noise.subtract)
    return Update(x0, grad, levels, x_t, eps, noise)
