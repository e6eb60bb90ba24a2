"""The exemplar prior: the exact optimal denoiser of a finite set of images.

For data {X_i} with weights pi_i, the diffusion model of that empirical distribution has the
closed-form posterior mean E[x0 | x_t] = sum_i softmax_i(log pi_i - |x_t - sqrt(a) X_i|^2 / 2(1 - a)) X_i,
and eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a). It needs no training, and it is the reference
against which the rest of SDI is tested. Prompts are the images' labels ("" = all images); with
per-image view directions, a von Mises-Fisher kernel over the camera direction weights pi_i, which
makes it a multi-view prior.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch
from sdi.diffusion.schedules import sd_alphas_cumprod


class UnknownPrompt(ValueError):
    """A prompt that names none of the prior's labels."""


class ExemplarPrior:
    """Closed-form denoiser of ``images`` (N, C, H, W) in [-1, 1], grouped by ``labels``."""

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[str],
        alphas_cumprod: Tensor | None = None,
        views: Tensor | None = None,
        view_concentration: float = 0.0,
    ):
        if images.ndim != 4 or len(images) == 0:
            raise ValueError("ExemplarPrior needs a non-empty (N, C, H, W) image tensor")
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images = images.double()
        self.flat = self.images.flatten(1)
        self.sq_norms = self.flat.pow(2).sum(1)
        self.labels = list(labels)
        self.alphas_cumprod = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.views = None if views is None else torch.nn.functional.normalize(views.double(), dim=-1)
        self.view_concentration = view_concentration
        self._index = {name: torch.tensor([i for i, l in enumerate(self.labels) if l == name]) for name in set(labels)}

    @property
    def prompts(self) -> list[str]:
        """The labels this prior is conditioned on, sorted."""
        return sorted(self._index)

    def members(self, prompt: str) -> Tensor:
        """Indices of the exemplars a prompt selects ("" = all)."""
        if prompt == "":
            return torch.arange(len(self.labels))
        if prompt not in self._index:
            raise UnknownPrompt(f"unknown prompt {prompt!r}; this prior knows: {', '.join(self.prompts)}")
        return self._index[prompt]

    def log_prior(self, idx: Tensor, cameras: CameraBatch | None) -> Tensor:
        """log pi_i per query (B, n): uniform, or a vMF kernel over the cameras' view directions."""
        if cameras is None or self.views is None or self.view_concentration == 0.0:
            return torch.zeros(1, len(idx), dtype=torch.float64)
        cos = torch.nn.functional.normalize(cameras.view_directions().double(), dim=-1) @ self.views[idx].T
        return self.view_concentration * cos

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, prompt: str, cameras: CameraBatch | None = None) -> Tensor:
        """E[x0 | x_t] under the exemplars of ``prompt``; alpha (B,) the level of each x_t."""
        idx = self.members(prompt)
        a = alpha.double().reshape(-1, 1)
        x = x_t.double().flatten(1)
        # |x - sqrt(a) X|^2 = |x|^2 - 2 sqrt(a) x.X + a |X|^2 ; |x|^2 is constant per row and drops out.
        logits = (2 * a.sqrt() * (x @ self.flat[idx].T) - a * self.sq_norms[idx]) / (2 * (1 - a))
        weights = torch.softmax(logits + self.log_prior(idx, cameras), dim=1)
        return (weights @ self.flat[idx]).reshape(x_t.shape)

    def project(self, x: Tensor, prompt: str) -> Tensor:
        """The nearest sample of the prior: the nearest image of ``prompt`` to each x (B, C, H, W)."""
        idx = self.members(prompt)
        nearest = torch.cdist(x.double().flatten(1), self.flat[idx]).argmin(1)
        return self.images[idx][nearest].to(x.dtype)

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[str], cameras: CameraBatch | None = None
    ) -> Tensor:
        """eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a), one prediction per prompt."""
        alpha = self.alphas_cumprod[t.long().cpu()].to(torch.float64).expand(x_t.shape[0])
        a = alpha.reshape(-1, 1, 1, 1)
        out = [(x_t.double() - a.sqrt() * self.posterior_mean(x_t, alpha, p, cameras)) / (1 - a).sqrt() for p in prompts]
        return torch.stack(out).to(x_t.dtype)

    def encode(self, image: Tensor) -> Tensor:
        return image

    def decode(self, latent: Tensor) -> Tensor:
        return latent
