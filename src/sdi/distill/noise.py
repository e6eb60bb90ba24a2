"""Estimators of the noise kappa (paper Sec. 6.2), the only thing that tells the rules apart.

kappa^t_y(x0) is the root of Eq. 8: eps = eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, y). Each estimator
is a small frozen dataclass called with a ``NoiseQuery``; state that must live across steps (the
fixed noise, the cached prediction) sits in ``query.state``, a dict the caller owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from sdi.diffusion.ddim import Callback, ddim_invert
from sdi.diffusion.denoiser import CameraBatch, Denoiser
from sdi.diffusion.guidance import Guidance, eps_fn_for
from sdi.diffusion.noise_sampler import NoiseSampler, as_noise_sampler
from sdi.diffusion.parametrization import add_noise, eps_from_x0
from sdi.diffusion.schedules import Grid, leading_inversion_levels, level_grid, source_grid


@dataclass
class NoiseQuery:
    """Everything an estimator may look at."""

    denoiser: Denoiser
    x0: Tensor  # (B, C, H, W) current image (or latent), detached
    t: int  # level at which kappa is the noise
    t_update: int  # level at which the update evaluates the prior
    prompt: str
    forward_cfg: float  # guidance scale of the update, hence of Eq. 8
    cameras: CameraBatch | None  # the B cameras the images are seen from
    noise: NoiseSampler | torch.Generator  # where every N(0, I) draw comes from (a generator is wrapped)
    state: dict = field(default_factory=dict)
    guidance: Guidance = Guidance()  # the rule's guidance form, shared by the inversion and the update
    callback: Callback | None = None  # sees every DDIM step of an inversion

    def __post_init__(self):
        self.noise = as_noise_sampler(self.noise)

    @property
    def alpha(self) -> Tensor:
        return self.denoiser.alphas_cumprod[self.t].to(self.x0)

    def randn(self) -> Tensor:
        """The next N(0, I) draw of the image's shape."""
        return self.noise(self.x0)

    def eps_fn(self, cfg: float, prompt: str | None = None):
        return eps_fn_for(self.denoiser, self.prompt if prompt is None else prompt, cfg, self.cameras, self.guidance)


@dataclass(frozen=True)
class Noise:
    """kappa, the baseline subtracted from the prediction (kappa itself except for ISM-like rules) and,
    where the estimator hands it over, the update's network input x_t itself (else sqrt(a_t) x0 +
    sqrt(1 - a_t) kappa is formed from kappa: Eq. 10)."""

    kappa: Tensor
    baseline: Tensor | None = None
    x_t: Tensor | None = None

    @property
    def subtract(self) -> Tensor:
        return self.kappa if self.baseline is None else self.baseline


@dataclass(frozen=True)
class RandomResampled:
    """kappa ~ N(0, I) fresh every step: SDS."""

    def __call__(self, q: NoiseQuery) -> Noise:
        return Noise(q.randn())


@dataclass(frozen=True)
class RandomFixed:
    """kappa ~ N(0, I) drawn once per run and reused (ablation)."""

    def __call__(self, q: NoiseQuery) -> Noise:
        if "fixed_noise" not in q.state:
            q.state["fixed_noise"] = q.randn()
        return Noise(q.state["fixed_noise"])


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point iteration kappa <- eps_theta(sqrt(a) x0 + sqrt(1 - a) kappa, y) (ablation; diverges in 3D)."""

    iterations: int = 10

    def __call__(self, q: NoiseQuery) -> Noise:
        eps_fn, kappa = q.eps_fn(q.forward_cfg), q.randn()
        t = torch.full((len(kappa),), q.t)
        for _ in range(self.iterations):
            kappa = eps_fn(add_noise(q.x0, kappa, q.alpha), t)
        return Noise(kappa)


@dataclass(frozen=True)
class GradientDescent:
    """Adam on the Eq. 8 residual |kappa - eps_theta(x_t(kappa))|^2 (ablation "SGD")."""

    iterations: int = 10
    lr: float = 0.1

    def __call__(self, q: NoiseQuery) -> Noise:
        eps_fn, t = q.eps_fn(q.forward_cfg), torch.full((len(q.x0),), q.t)
        kappa = q.randn().requires_grad_(True)
        optimizer = torch.optim.Adam([kappa], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                optimizer.zero_grad()
                (kappa - eps_fn(add_noise(q.x0, kappa, q.alpha), t)).pow(2).sum().backward()
                optimizer.step()
        return Noise(kappa.detach())


def paper_inversion_steps(t: int, num_train: int) -> int:
    """int(10 t) inversion steps for t as a fraction (paper App. A), at least one."""
    return max(int(10 * t / num_train), 1)


@dataclass(frozen=True)
class Inversion:
    """DDIM inversion of x0 up to the level t + tau (SDI): kappa = (x_t+tau - sqrt(a) x0) / sqrt(1 - a) there.
    cfg = -7.5 is the paper's prompt-conditioned inversion; cfg = 0 is unconditional (as ISM). The guidance
    form (Perp-Neg, CFG anchor) is the rule's."""

    cfg: float = -7.5
    """Guidance scale of the inversion (paper: -7.5)."""
    steps: int | Callable[[int, int], int] = paper_inversion_steps
    """``path="even"``: number of inversion steps, or a function (t + tau, T) -> steps; default int(10 t)."""
    step_noise: float = 0.0
    """Entropy added after every inversion step, x the DDPM posterior std (authors' code: 0.3)."""
    path: Literal["even", "leading"] = "even"
    """"even": ``steps`` equal strides from the clean image (alpha 1) to t + tau, the model labelled with the
    destination level (the paper; diffusers' inverse scheduler). "leading": the authors' path
    (``leading_inversion_levels``): the 10-step leading grid below t, -99 first (alpha a(0)), t + tau last,
    the model labelled with the SOURCE level."""
    forward_on_inverted: bool = False
    """Hand the inverted latent x(t + tau) itself to the update, labelled t (the authors' forward call), instead
    of Eq. 10's sqrt(a_t) x0 + sqrt(1 - a_t) kappa; the update then subtracts the noise that places x(t + tau)
    at level t, so that its target is the DDIM x0 prediction (x(t + tau) - sqrt(1 - a_t) eps) / sqrt(a_t)."""

    def grid(self, ac: Tensor, t_kappa: int, t: int) -> Grid:
        """The inversion path from the clean image to t_kappa (= t + tau) for an update at t."""
        if self.path == "leading":
            return source_grid(ac, leading_inversion_levels(len(ac), t, t_kappa))
        n = self.steps(t_kappa, len(ac)) if callable(self.steps) else self.steps
        return level_grid(ac, -1, t_kappa, n)

    def __call__(self, q: NoiseQuery) -> Noise:
        grid = self.grid(q.denoiser.alphas_cumprod, q.t, q.t_update)
        x_t = ddim_invert(q.eps_fn(self.cfg), q.x0, grid, q.callback, self.step_noise, q.noise)
        kappa = eps_from_x0(x_t, q.x0, q.alpha)
        if not self.forward_on_inverted:
            return Noise(kappa)
        alpha_update = q.denoiser.alphas_cumprod[q.t_update].to(q.x0)
        return Noise(kappa, baseline=eps_from_x0(x_t, q.x0, alpha_update), x_t=x_t)


@dataclass(frozen=True)
class Cached:
    """kappa = the previous step's guided prediction (2D only): with GridT this is exactly DDIM.
    The first step uses ``state['initial_noise']``, the run's starting noise."""

    def __call__(self, q: NoiseQuery) -> Noise:
        kappa = q.state.get("last_eps", q.state.get("initial_noise"))
        if kappa is None:
            raise ValueError("Cached kappa needs state['initial_noise'] on the first step (2D runs only)")
        return Noise(kappa)


@dataclass(frozen=True)
class WithEntropy:
    """Adds the paper's entropy term H(t) = scale sqrt(1 - a_t) N(0, I) to the inverted x_t,
    i.e. scale N(0, I) to kappa (App. A; scale 0.3), against mode seeking."""

    inner: Callable[[NoiseQuery], Noise]
    scale: float = 0.3

    def __call__(self, q: NoiseQuery) -> Noise:
        noise = self.inner(q)
        if noise.x_t is not None:
            raise ValueError("WithEntropy adds to kappa of Eq. 10's forward call; an estimator that hands over "
                             "its inverted latent takes entropy through Inversion(step_noise=...)")
        return Noise(noise.kappa + self.scale * q.randn(), noise.baseline)


def eq8_residual(q: NoiseQuery, kappa: Tensor) -> Tensor:
    """Per-image RMS of the Eq. 8 residual, rescaled to x0 units: sigma_t |kappa - eps_theta(x_t(kappa))|
    (the quantity of the paper's Figures 9 and 10)."""
    t = torch.full((len(kappa),), q.t)
    with torch.no_grad():
        eps = q.eps_fn(q.forward_cfg)(add_noise(q.x0, kappa, q.alpha), t)
    sigma = ((1 - q.alpha) / q.alpha).sqrt()
    return sigma * (kappa - eps).flatten(1).pow(2).mean(1).sqrt()
