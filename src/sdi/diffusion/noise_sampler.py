"""Where Gaussian draws come from: a noise sampler the caller owns (k-diffusion's ``noise_sampler``).

A ``NoiseSampler`` is any callable ``noise(like) -> Tensor`` returning the next N(0, I) draw with the
shape, dtype and device of ``like``. Every rule, DDIM function and sampled encoding takes one, so a
run draws from its own ``torch.Generator`` (``generator_noise``) and a test can replay recorded
draws in their recorded order (``ReplayNoise``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

NoiseSampler = Callable[[Tensor], Tensor]


def generator_noise(generator: torch.Generator) -> NoiseSampler:
    """Draws from ``generator``, on the generator's device (a CPU generator also drives CUDA runs),
    then moved to the device and dtype of ``like``."""

    def noise(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator, device=generator.device).to(like)

    return noise


def as_noise_sampler(noise: NoiseSampler | torch.Generator) -> NoiseSampler:
    """A sampler as is; a ``torch.Generator`` wrapped by ``generator_noise``."""
    return generator_noise(noise) if isinstance(noise, torch.Generator) else noise


class ReplayNoise:
    """Serves recorded draws in order; a draw of the wrong shape, or one draw too many, is an error."""

    def __init__(self, draws: Sequence[Tensor]):
        self.draws = list(draws)
        self.served = 0

    def __call__(self, like: Tensor) -> Tensor:
        if self.served >= len(self.draws):
            raise IndexError(f"all {len(self.draws)} recorded draws were already served")
        draw = self.draws[self.served]
        if tuple(draw.shape) != tuple(like.shape):
            shape, wanted = tuple(draw.shape), tuple(like.shape)
            raise ValueError(f"recorded draw {self.served} has shape {shape}, asked for {wanted}")
        self.served += 1
        return draw.to(like)

    @property
    def remaining(self) -> int:
        return len(self.draws) - self.served
