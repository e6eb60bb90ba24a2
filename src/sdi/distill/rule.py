"""The one update every score-distillation rule shares (paper Eq. 10), and the one loss convention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from sdi.diffusion.ddim import Callback
from sdi.diffusion.denoiser import CameraBatch, Denoiser
from sdi.diffusion.guidance import Guidance, guided_eps
from sdi.diffusion.noise_sampler import NoiseSampler, generator_noise
from sdi.diffusion.parametrization import add_noise
from sdi.distill.noise import Noise, NoiseQuery
from sdi.distill.timesteps import Levels

Weighting = Literal["sigma", "one_minus_alpha", "one"]


def weight(alpha: Tensor, kind: Weighting) -> Tensor:
    """w(t): sigma(t) makes the update Eq. 10 (target = the DDIM x0 prediction); 1 - a(t) is DreamFusion's."""
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
    guidance: Guidance = Guidance()
    """How the prior's branches are combined (Perp-Neg, CFG anchor, negative prompt), in the inversion too."""
    loss_weight: float | Literal["elements"] = 1.0
    """Weight of the rule's term in the one distillation loss (``distillation_loss``). "elements" = the
    latent's element count B C H W, which turns that mean into a sum: threestudio's SDS loss 0.5 sum / B."""


@dataclass(frozen=True)
class Update:
    """What one distillation step produced; ``grad`` is w(t) (eps - kappa), the step x0 takes."""

    x0: Tensor
    grad: Tensor
    levels: Levels
    x_t: Tensor
    eps: Tensor
    noise: Noise
    loss_weight: float = 1.0

    @property
    def target(self) -> Tensor:
        """x0 - grad: what the loss pulls x0 towards (threestudio's trick: the loss's gradient is along ``grad``)."""
        return self.x0 - self.grad

    def loss(self, latent: Tensor) -> Tensor:
        """The rule's loss on ``latent``, the differentiable x0: ``loss_weight`` x ``distillation_loss``."""
        return weighted_loss(latent, self.target, self.loss_weight)


def weighted_loss(x0: Tensor, target: Tensor, loss_weight: float) -> Tensor:
    """``loss_weight`` x ``distillation_loss``: a rule's term, for its fresh ``Update`` or a target kept for later
    steps (``Preset.steps_per_target``)."""
    return loss_weight * distillation_loss(x0, target)


def distillation_loss(x0: Tensor, target: Tensor) -> Tensor:
    """0.5 mean((x0 - target.detach())^2) / B, the authors' SDI loss (threestudio ``stable_diffusion_sdi_guidance``):
    a mean over all B C H W elements, divided by the batch size once more. Its gradient is
    (x0 - target) / (B^2 C H W); the regularizer weights of the presets assume this scale."""
    return 0.5 * (x0 - target.detach()).pow(2).mean() / x0.shape[0]


def distill_update(
    rule: Rule,
    denoiser: Denoiser,
    x0: Tensor,
    levels: Levels,
    prompt: str,
    noise: NoiseSampler | torch.Generator,
    state: dict,
    cameras: CameraBatch | None = None,
    callback: Callback | None = None,
) -> Update:
    """Eq. 10 at given levels: kappa from the rule's estimator at t_kappa, the guided prediction at t,
    grad = w(t) (eps - kappa). ``noise`` serves every N(0, I) draw; ``callback`` sees the inversion's steps."""
    ac = denoiser.alphas_cumprod
    x0 = x0.detach()
    query = NoiseQuery(denoiser, x0, levels.t_kappa, levels.t, prompt, rule.cfg, cameras, noise, state,
                       rule.guidance, callback)
    kappa = rule.noise(query)
    t = torch.as_tensor(levels.t).expand(len(x0))  # (B,) labels; a per-item t only for t-blind estimators
    alpha = ac[t].to(x0).view(-1, *[1] * (x0.ndim - 1))
    x_t = add_noise(x0, kappa.kappa, alpha) if kappa.x_t is None else kappa.x_t
    with torch.no_grad():
        eps = guided_eps(denoiser, x_t, t, prompt, rule.cfg, cameras, rule.guidance)
    state["last_eps"] = eps
    grad = weight(alpha, rule.weighting) * (eps - kappa.subtract)
    loss_weight = float(x0.numel()) if rule.loss_weight == "elements" else rule.loss_weight
    return Update(x0, grad, levels, x_t, eps, kappa, loss_weight)


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
    noise: NoiseSampler | None = None,
) -> Update:
    """One step of Eq. 10 on x0 (B, C, H, W): the rule's schedule picks (t, t_kappa) with ``generator``,
    then ``distill_update``; N(0, I) draws come from ``noise`` (default: the same generator)."""
    levels = rule.timesteps(step, total, len(denoiser.alphas_cumprod), generator)
    noise = generator_noise(generator) if noise is None else noise
    return distill_update(rule, denoiser, x0, levels, prompt, noise, state, cameras)
