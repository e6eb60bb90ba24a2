"""How a rule picks its timestep t and the level t + tau where kappa is estimated.

Levels are integer DDPM timesteps (0..T-1); fractions t in [0, 1] map to int(t T).
Every schedule is a pure function of (step, total steps, generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdi.diffusion.schedules import Spacing, spaced_timesteps


def to_level(t: float, num_train: int) -> int:
    """Fraction of the diffusion time -> integer timestep, clamped to [0, T - 1]."""
    return min(max(int(t * num_train), 0), num_train - 1)


@dataclass(frozen=True)
class Levels:
    """The timestep of the update, and the (higher or equal) level at which kappa lives."""

    t: int
    """Level of the update (schedules give an int; a (B,) int64 tensor of per-item levels, as threestudio's
    SDS draws for B > 1, works with estimators that do not look at t, such as random kappa)."""
    t_kappa: int


@dataclass(frozen=True)
class RandomT:
    """DreamFusion: t ~ U(lo, hi) every step, kappa at the same level."""

    lo: float = 0.02
    """Lowest fraction of the diffusion time."""
    hi: float = 0.98
    """Highest fraction of the diffusion time."""

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        u = torch.rand((), generator=generator, device=generator.device).item()
        t = to_level(self.lo + (self.hi - self.lo) * u, num_train)
        return Levels(t, t)


@dataclass(frozen=True)
class UniformT:
    """threestudio's SDS: an integer t uniform in lo..hi inclusive (``torch.randint(min_step, max_step + 1)``,
    min/max_step = int(T x 0.02 / 0.98) = 20 / 980), kappa at the same level."""

    lo: int = 20
    hi: int = 980

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        t = int(torch.randint(self.lo, self.hi + 1, (), generator=generator, device=generator.device))
        return Levels(t, t)


@dataclass(frozen=True)
class AnnealedT:
    """SDI (paper App. A): t decays linearly from ``start`` to ``end``; kappa is estimated at t + tau,
    tau ~ U(0, tau_max) (paper 1/30; the authors' code 0.1)."""

    start: float = 0.98
    """t at the first step (fraction of the diffusion time)."""
    end: float = 0.2
    """t at the last step (the authors' code: 0.25)."""
    tau_max: float = 1.0 / 30.0
    """Upper bound of the jitter tau between the update's level and kappa's level."""
    horizon: int | None = None
    """Steps over which t anneals; None = the run's length. The authors' code fixes 10000."""

    def fraction(self, step: int, total: int) -> float:
        """t(step) as a fraction, a pure function of the step."""
        span = max((self.horizon or total) - 1, 1)
        f = min(step / span, 1.0)
        return (1 - f) * self.start + f * self.end  # lands exactly on ``end`` at the last step

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        t = self.fraction(step, total)
        u = torch.rand((), generator=generator, device=generator.device).item() if self.tau_max > 0 else 0.0
        tau = self.tau_max * u
        return Levels(to_level(t, num_train), to_level(t + tau, num_train))


@dataclass(frozen=True)
class ThreestudioAnnealedT:
    """The authors' SDI schedule, literally (threestudio ``update_step`` and ``get_inversion_timesteps``):
    t = int(T ((hi - lo) (1 - step / horizon) + lo)), the horizon being the guidance's own trainer_max_steps
    whatever the run's length; delta = int(u T // 10) training steps (0..99), u ~ U(0, 1); t + delta
    clamped to T - 1. 980 -> 250 over 10000 steps."""

    hi: float = 0.98
    """t fraction at step 0 (max_step_percent)."""
    lo: float = 0.25
    """t fraction at the horizon (min_step_percent)."""
    horizon: int = 10_000
    """trainer_max_steps of the authors' config."""
    delta_divisor: int = 10
    """inversion_n_steps: delta = int(u T // delta_divisor)."""

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        t = int(num_train * ((self.hi - self.lo) * (1 - step / self.horizon) + self.lo))
        u = torch.rand((), generator=generator, device=generator.device).item()
        delta = int(u * num_train // self.delta_divisor)
        return Levels(t, min(t + delta, num_train - 1))


@dataclass(frozen=True)
class GridT:
    """The DDIM sampling grid as a schedule (2D): step i updates at grid[i] with kappa at grid[i - 1]
    (the top level T - 1 on step 0). With cached kappa this is exactly DDIM."""

    spacing: Spacing = "leading"
    """Timestep spacing of the grid."""
    offset: int = 1
    """Offset of a leading grid (Stable Diffusion uses 1)."""

    def timesteps(self, total: int, num_train: int) -> torch.Tensor:
        """Descending integer timesteps of the grid."""
        return spaced_timesteps(num_train, total, self.spacing, self.offset).flip(0)

    def __call__(self, step: int, total: int, num_train: int, generator: torch.Generator) -> Levels:
        ts = self.timesteps(total, num_train)
        t_kappa = int(ts[step - 1]) if step > 0 else num_train - 1
        return Levels(int(ts[step]), t_kappa)
