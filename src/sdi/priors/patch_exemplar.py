"""The patch exemplar prior: the exact denoiser of images quilted from exemplar patches.

The distribution: pick a label c (probability proportional to its number of images), then fill each
non-overlapping ``patch`` x ``patch`` tile of the image, independently, with that tile of a uniformly
chosen image of label c. Its samples are sharp quilts of exemplar tiles, and it has exponentially
many of them. What it adds over the whole-image exemplar prior is the thing that makes SDS blurry on
real images: the detail of a small tile carries little energy, so its posterior stays uncertain up to
moderate noise, and E[x0 | x_t] there is an average of many tiles. On whole 32x32 images the posterior
collapses onto one exemplar at almost every noise level and nothing can blur.

The posterior factorizes over tiles given the label. With logits l_pn = (2 sqrt(a) <x_p, X_np> - a |X_np|^2)
/ 2(1 - a) (plus the view kernel's log prior of image n, as in the exemplar prior):
    E[x0_p | x_t, c] = sum_n softmax_n(l_pn) X_np over the images n of c,
    log p(x_t | c) = sum_p logsumexp_n(l_pn) - P log Z_c + const, Z_c = sum_{n in c} pi_n,
and the unconditional branch mixes the labels with posterior weights p(c | x_t) ~ Z_c p(x_t | c).
With ``patch`` = the image size this is exactly ``ExemplarPrior``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sdi.priors.exemplar import ExemplarPrior


class PatchExemplarPrior(ExemplarPrior):
    """Closed-form denoiser of quilts of ``patch`` x ``patch`` tiles of ``images`` (N, C, H, W) in [-1, 1]."""

    def __init__(self, images: Tensor, labels, patch: int, alphas_cumprod: Tensor | None = None, **view_kernel):
        height, width = images.shape[-2:]
        if patch < 1 or height % patch or width % patch:
            raise ValueError(f"patch size {patch} must divide the image size {height}x{width}; pick another --patch")
        super().__init__(images, labels, alphas_cumprod, **view_kernel)
        self.patch = patch
        self.tiles = self.to_tiles(self.images)  # (N, P, C * patch * patch)
        self.tile_sq_norms = self.tiles.pow(2).sum(-1)  # (N, P)

    def to_tiles(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, P, C * patch^2), tiles in row-major order."""
        return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)

    def from_tiles(self, tiles: Tensor, shape: torch.Size) -> Tensor:
        return F.fold(tiles.transpose(1, 2), shape[-2:], self.patch, stride=self.patch)

    def label_posterior(self, x: Tensor, a: Tensor, idx: Tensor, cameras) -> tuple[Tensor, Tensor]:
        """log Z_c p(x_t | c) up to a constant shared by all labels (B,), and E[x0 | x_t, c] as tiles (B, P, d),
        for the images ``idx`` of one label; x (B, P, d) float64 tiles of x_t, a (B, 1, 1)."""
        log_prior = self.log_prior(idx, cameras)  # (B or 1, n)
        dots = torch.einsum("bpd,npd->bpn", x, self.tiles[idx])
        logits = (2 * a.sqrt() * dots - a * self.tile_sq_norms[idx].T) / (2 * (1 - a)) + log_prior[:, None, :]
        tiles = torch.einsum("bpn,npd->bpd", torch.softmax(logits, -1), self.tiles[idx])
        log_evidence = torch.logsumexp(logits, -1).sum(1) - (x.shape[1] - 1) * torch.logsumexp(log_prior, -1)
        return log_evidence, tiles

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, prompt: str, cameras=None) -> Tensor:
        """E[x0 | x_t] under ``prompt``'s images ("" = the mixture of every label); alpha (B,)."""
        a, x = alpha.double().reshape(-1, 1, 1), self.to_tiles(x_t.double())
        groups = [self.members(prompt)] if prompt else [self.members(label) for label in self.prompts]
        parts = [self.label_posterior(x, a, idx, cameras) for idx in groups]
        weights = torch.softmax(torch.stack([evidence for evidence, _ in parts]), dim=0)  # (labels, B)
        tiles = torch.einsum("lb,lbpd->bpd", weights, torch.stack([tiles for _, tiles in parts]))
        return self.from_tiles(tiles, x_t.shape)

    def project(self, x: Tensor, prompt: str) -> Tensor:
        """The nearest sample of the prior: every tile replaced by the nearest tile of ``prompt``'s images."""
        tiles, exemplars = self.to_tiles(x.double()), self.tiles[self.members(prompt)]  # (B, P, d), (n, P, d)
        distances = (tiles[:, :, None] - exemplars.transpose(0, 1)[None]).pow(2).sum(-1)  # (B, P, n)
        nearest = exemplars.transpose(0, 1)[torch.arange(tiles.shape[1]), distances.argmin(-1)]  # (B, P, d)
        return self.from_tiles(nearest, x.shape).to(x.dtype)
