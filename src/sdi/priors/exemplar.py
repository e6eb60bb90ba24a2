"""The exemplar prior: the exact optimal denoiser of a finite set of images.

For data {X_i} with weights pi_i, the diffusion model of that empirical distribution has the
closed-form posterior mean E[x0 | x_t] = sum_i softmax_i(log pi_i - |x_t - sqrt(a) X_i|^2 / 2(1 - a)) X_i,
and eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a). It needs no training, and it is the reference
against which the rest of SDI is tested. Prompts are the images' labels ("" = all images); with
per-image view directions, a von Mises-Fisher kernel over the camera direction weights pi_i. The
embedded 3D prior (``sdi.priors.catalog``) uses the same posterior over renders made at the query camera.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch
from sdi.diffusion.schedules import sd_alphas_cumprod


def alpha_at(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """a(t) (B,) float64 of labels t (B,); a negative label (the authors' -99 of the clean image) reads a(0)."""
    return alphas_cumprod[t.long().cpu().clamp(min=0)].to(torch.float64)


def exemplar_posterior_mean(x: Tensor, alpha: Tensor, exemplars: Tensor, sq_norms: Tensor,
                            log_prior: Tensor | None = None, smoothing: float = 0.0, joint: bool = False) -> Tensor:
    """E[x0 | x_t = x] (B, D) for exemplars (n, D), or per query (B, n, D), with squared norms (n,) or (B, n),
    levels alpha (B,) and log weights log pi (B, n) or None (uniform). Everything float64.

    ``smoothing`` s0 > 0: the data are the exemplars plus N(0, s0^2 I) (a kernel density estimate: a model that
    has not memorized its data below noise s0). x_t = sqrt(a) X_k + s eps with s^2 = a s0^2 + 1 - a, and
    E[x0 | x_t, k] = X_k + sqrt(a) s0^2 / s^2 (x_t - sqrt(a) X_k).

    ``joint``: the B rows are views of one sample (exemplar i is the rows' i-th images together, so per-query
    exemplars): one posterior over i for all rows, its log-likelihood the sum of the rows' (a multi-view model's
    joint posterior; the rows' log weights add as well)."""
    a = alpha.double().reshape(-1, 1)
    variance = a * smoothing**2 + 1 - a
    # |x - sqrt(a) X|^2 = |x|^2 - 2 sqrt(a) x.X + a |X|^2 ; |x|^2 is constant per row and drops out.
    dots = x @ exemplars.T if exemplars.ndim == 2 else torch.einsum("bd,bnd->bn", x, exemplars)
    logits = (2 * a.sqrt() * dots - a * sq_norms) / (2 * variance)
    if log_prior is not None:
        logits = logits + log_prior
    if joint:
        logits = logits.sum(0, keepdim=True).expand_as(logits)
    weights = torch.softmax(logits, dim=1)
    mean = weights @ exemplars if exemplars.ndim == 2 else torch.einsum("bn,bnd->bd", weights, exemplars)
    if smoothing == 0.0:
        return mean
    return mean + a.sqrt() * smoothing**2 / variance * (x - a.sqrt() * mean)


class PosteriorMeanDenoiser:
    """A pixel-space ``Denoiser`` given by its closed-form ``posterior_mean(x_t, alpha, prompt, cameras)`` (float64)
    and its schedule ``alphas_cumprod``: eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a), one per prompt branch."""

    alphas_cumprod: Tensor

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, prompt: str, cameras: CameraBatch | None) -> Tensor:
        raise NotImplementedError

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[str], cameras: CameraBatch | None = None
    ) -> Tensor:
        alpha = alpha_at(self.alphas_cumprod, t).expand(x_t.shape[0])
        a = alpha.reshape(-1, 1, 1, 1)
        means = [self.posterior_mean(x_t, alpha, p, cameras) for p in prompts]
        return torch.stack([((x_t.double() - a.sqrt() * mean) / (1 - a).sqrt()).to(x_t.dtype) for mean in means])

    def encode(self, image: Tensor) -> Tensor:
        return image

    def decode(self, latent: Tensor) -> Tensor:
        return latent


class UnknownPrompt(ValueError):
    """A prompt that names none of the prior's labels."""


class ExemplarPrior(PosteriorMeanDenoiser):
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
        self._blocks: dict[str, tuple[Tensor, Tensor]] = {}
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
        flat, sq_norms = self._block(prompt)
        mean = exemplar_posterior_mean(x_t.double().flatten(1), alpha, flat, sq_norms,
                                       self.log_prior(self.members(prompt), cameras))
        return mean.reshape(x_t.shape)

    def _block(self, prompt: str) -> tuple[Tensor, Tensor]:
        """The exemplars of ``prompt`` (n, D) and their squared norms, gathered once per prompt (a fresh gather
        per call is a large block allocated and freed every call)."""
        if prompt not in self._blocks:
            idx = self.members(prompt)
            self._blocks[prompt] = (self.flat[idx], self.sq_norms[idx])
        return self._blocks[prompt]

    def project(self, x: Tensor, prompt: str) -> Tensor:
        """The nearest sample of the prior: the nearest image of ``prompt`` to each x (B, C, H, W)."""
        idx = self.members(prompt)
        nearest = torch.cdist(x.double().flatten(1), self.flat[idx]).argmin(1)
        return self.images[idx][nearest].to(x.dtype)
