"""The ``Denoiser`` protocol: what a score-distillation rule needs from a diffusion prior.

It is a diffusion concept, so it lives here; every prior (``sdi.priors``) implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union, runtime_checkable

from torch import Tensor

from sdi.diffusion.noise_sampler import NoiseSampler


@runtime_checkable
class CameraBatch(Protocol):
    """What a denoiser may read of the cameras it is conditioned on (``sdi.scene.cameras.Cameras``
    is one): a batch of B whole pinhole cameras (camera-to-world ``c2w`` (B, 4, 4), OpenGL convention,
    and vertical field of view ``fovy`` (B,) in radians), their unit view directions from the object to
    each camera and their (B, 2) elevation and azimuth in degrees (exactly as given where the cameras
    were built from angles, so that view bins at 45 deg boundaries see 45, not 44.99999), and the (B, 3)
    ``background`` colour behind the object in each image (None: white)."""

    c2w: Tensor
    fovy: Tensor
    background: Tensor | None

    def __len__(self) -> int: ...

    def view_directions(self) -> Tensor: ...

    def elevation_azimuth(self) -> Tensor: ...


@dataclass(frozen=True)
class PromptMix:
    """One branch conditioned, per batch item b, on sum_k weights[b, k] E(texts[k]): a weighted mix of
    the texts' embeddings, formed before the network (threestudio's Perp-Neg interpolates its view
    prompts this way). The texts are used as written (no view suffix is added); a one-hot row
    conditions item b on one text. Only priors with free text (``has_free_text``) accept it."""

    texts: tuple[str, ...]
    weights: Tensor
    """(B, K) float32, one row per batch item, one column per text."""

    def __post_init__(self):
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.texts):
            raise ValueError(f"PromptMix needs (B, {len(self.texts)}) weights, got {tuple(self.weights.shape)}")


Prompt = Union[str, PromptMix]
"""A branch of ``predict_eps``: a text (the same for every item) or a per-item mix of texts."""


@runtime_checkable
class Denoiser(Protocol):
    """A discrete-time eps-predicting diffusion model.

    ``alphas_cumprod``: (T,) a(t) of its schedule. ``predict_eps(x_t, t, prompts, cameras)``: x_t (B, C, H, W),
    t (B,) int64 labels, one noise prediction per prompt branch for the whole batch -> (len(prompts), B, C, H, W).
    A label may be negative: the authors' SDI inversion labels the clean image -99 (it sits at a(0));
    a prior that reads a(t) reads a(max(t, 0)), Stable Diffusion's UNet sees -99 itself.
    The empty prompt "" is the unconditional branch. ``cameras``: the B cameras the images are seen
    from (a ``CameraBatch``, e.g. ``sdi.scene.cameras.Cameras``), or None. View-aware priors read
    what they need: Stable Diffusion the view angles (view prompts), the embedded prior the whole
    camera; others ignore it. ``encode``/``decode`` map images in [-1, 1] (B, 3, H, W) to the space
    the model diffuses in and back (identity for pixel-space priors); distillation runs in that space,
    with gradients through ``encode``.

    Optional capabilities, attributes a prior may set (absent means False; read them with the
    helpers below, never with isinstance):

    - ``free_text``: prompts are any text, so view-suffixed prompts and ``PromptMix`` branches work
      (Stable Diffusion). Without it prompts are labels the prior knows (the embedded priors), and
      Perp-Neg maps to plain Eq. 3 CFG (``sdi.diffusion.guidance``).
    - ``sampled_encoding``: ``encode(image, noise)`` draws the latent (a VAE ``posterior.sample()``)
      with the caller's noise sampler; ``encode`` of other priors takes the image alone.
    """

    alphas_cumprod: Tensor

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[Prompt], cameras: CameraBatch | None = None
    ) -> Tensor: ...

    def encode(self, image: Tensor) -> Tensor: ...

    def decode(self, latent: Tensor) -> Tensor: ...


def has_free_text(denoiser: Denoiser) -> bool:
    """Whether ``denoiser`` takes any text and ``PromptMix`` branches (its ``free_text`` capability)."""
    return bool(getattr(denoiser, "free_text", False))


def encode(denoiser: Denoiser, image: Tensor, noise: NoiseSampler) -> Tensor:
    """``denoiser.encode(image)``, handing ``noise`` to priors whose encoding draws (``sampled_encoding``)."""
    if getattr(denoiser, "sampled_encoding", False):
        return denoiser.encode(image, noise)
    return denoiser.encode(image)


class CountingDenoiser:
    """Wraps a Denoiser and counts network evaluations (one per prompt branch per batch item)."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.alphas_cumprod = inner.alphas_cumprod
        self.calls = 0  # batched calls
        self.evaluations = 0  # branch x image evaluations

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[Prompt], cameras: CameraBatch | None = None
    ) -> Tensor:
        self.calls += 1
        self.evaluations += len(prompts) * x_t.shape[0]
        return self.inner.predict_eps(x_t, t, prompts, cameras)

    def encode(self, image: Tensor, *noise: NoiseSampler) -> Tensor:
        return self.inner.encode(image, *noise)

    def decode(self, latent: Tensor) -> Tensor:
        return self.inner.decode(latent)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
