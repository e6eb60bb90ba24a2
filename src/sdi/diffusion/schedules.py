"""DDPM noise schedules and DDIM timestep grids, as plain tensors.

Notation (paper -> code): a(t) -> ``alphas_cumprod[t]``; sigma(t) = sqrt(1 - a) / sqrt(a) -> ``sigma``.
Timesteps are integer indices into ``alphas_cumprod`` (0 = least noise, T - 1 = most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Spacing = Literal["leading", "trailing"]


def scaled_linear_betas(num_steps: int = 1000, start: float = 0.00085, end: float = 0.012) -> Tensor:
    """Stable Diffusion's schedule: betas linear in sqrt space."""
    return torch.linspace(start**0.5, end**0.5, num_steps, dtype=torch.float64) ** 2


def linear_betas(num_steps: int = 1000, start: float = 0.0001, end: float = 0.02) -> Tensor:
    """DDPM's original linear schedule (Ho et al. 2020)."""
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """a(t) = prod_{s <= t} (1 - beta_s), float32 like diffusers."""
    return torch.cumprod(1.0 - betas, dim=0).float()


def sd_alphas_cumprod() -> Tensor:
    """a(t) of Stable Diffusion 1.x / 2.x (scaled-linear 0.00085 -> 0.012, 1000 steps)."""
    return alphas_cumprod(scaled_linear_betas())


def sigma(alpha: Tensor | float) -> Tensor:
    """sigma(t) = sqrt(1 - a) / sqrt(a), the noise level of xbar = x / sqrt(a) (paper notation)."""
    alpha = torch.as_tensor(alpha)
    return ((1 - alpha) / alpha).sqrt()


def spaced_timesteps(num_train: int, num_steps: int, spacing: Spacing = "leading", offset: int = 0) -> Tensor:
    """Ascending integer timesteps of a ``num_steps`` grid (Lin et al. 2023, Table 2)."""
    if not 0 < num_steps <= num_train:
        raise ValueError(f"num_steps must be in 1..{num_train}, got {num_steps}")
    if spacing == "leading":
        ts = torch.arange(num_steps, dtype=torch.int64) * (num_train // num_steps) + offset
    elif spacing == "trailing":
        ratio = num_train / num_steps
        ts = torch.round(torch.arange(num_train, 0, -ratio, dtype=torch.float64)).flip(0).long() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use 'leading' or 'trailing'")
    return ts.clamp(0, num_train - 1)


@dataclass(frozen=True)
class Grid:
    """A DDIM path: evaluate the model at ``timesteps[i]`` on the sample at level ``alphas[i]``,
    then move it to level ``alphas[i + 1]``. len(alphas) == len(timesteps) + 1."""

    timesteps: Tensor  # (N,) int64
    alphas: Tensor  # (N + 1,) float

    def __post_init__(self) -> None:
        if len(self.alphas) != len(self.timesteps) + 1:
            raise ValueError("a Grid needs one more alpha than timesteps")

    def __len__(self) -> int:
        return len(self.timesteps)


def sampling_grid(
    ac: Tensor, num_steps: int, spacing: Spacing = "leading", offset: int = 1, final_alpha: float | None = None
) -> Grid:
    """Descending DDIM grid as diffusers' ``DDIMScheduler`` walks it (``final_alpha`` = 1 for
    ``set_alpha_to_one=True``; by default a(0), as Stable Diffusion configures it)."""
    ts = spaced_timesteps(len(ac), num_steps, spacing, offset).flip(0)
    final = ac[0] if final_alpha is None else torch.tensor(final_alpha, dtype=ac.dtype)
    alphas = torch.cat([ac[ts], final.reshape(1)])
    return Grid(ts, alphas)


def inversion_grid(
    ac: Tensor, num_steps: int, spacing: Spacing = "leading", offset: int = 1, initial_alpha: float | None = None
) -> Grid:
    """Ascending DDIM-inversion grid as diffusers' ``DDIMInverseScheduler`` walks it: the model is
    evaluated at the *destination* timestep on the sample at the level below it."""
    ts = spaced_timesteps(len(ac), num_steps, spacing, offset)
    stride = len(ac) // num_steps
    initial = ac[0] if initial_alpha is None else torch.tensor(initial_alpha, dtype=ac.dtype)
    prev = ts - stride
    start = ac[prev[0]] if prev[0] >= 0 else initial
    return Grid(ts, torch.cat([start.reshape(1), ac[ts]]))


def level_grid(ac: Tensor, t_from: int, t_to: int, num_steps: int, initial_alpha: float = 1.0) -> Grid:
    """A DDIM path between two integer levels in ``num_steps`` equal strides, model evaluated at the
    destination (inversion, t_to > t_from) or at the source (sampling, t_to < t_from).
    ``t_from = -1`` stands for the clean image (alpha = ``initial_alpha``)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    levels = torch.linspace(t_from, t_to, num_steps + 1).round().long()
    alpha_at = lambda t: ac[t] if t >= 0 else torch.tensor(initial_alpha, dtype=ac.dtype)  # noqa: E731
    alphas = torch.stack([alpha_at(int(t)) for t in levels])
    ts = levels[1:] if t_to > t_from else levels[:-1]
    return Grid(ts.clamp(min=0), alphas)


def leading_inversion_levels(num_train: int, t: int, t_end: int, num_steps: int = 10, offset: int = 1) -> Tensor:
    """The authors' SDI inversion levels (threestudio ``get_inversion_timesteps``): the points of the leading
    ``num_steps`` grid {offset + k T / n} strictly below t, the first of them minus the stride in front
    (-99, the clean latent) and ``t_end`` last. t = 250, t_end = 287 -> [-99, 1, 101, 201, 287].
    (Their code fails for t <= offset, where no point lies below t; here the path is then one step.)"""
    stride = num_train // num_steps
    below = [offset + k * stride for k in range(num_steps) if offset + k * stride < t]
    first = (below[0] if below else offset) - stride
    return torch.tensor([first, *below, t_end], dtype=torch.int64)


def source_grid(ac: Tensor, levels: Tensor) -> Grid:
    """A DDIM path through integer ``levels``, the model labelled with the SOURCE level of each step
    (the authors' inversion; diffusers' inverse scheduler labels the destination). A negative level
    sits at a(0): the label -99 of the clean latent reaches the model as is."""
    return Grid(levels[:-1], ac[levels.clamp(min=0)])
