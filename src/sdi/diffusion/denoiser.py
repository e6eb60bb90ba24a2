"""The ``Denoiser`` protocol: what a score-distillation rule needs from a diffusion prior.

It is a diffusion concept, so it lives here; every prior (``sdi.priors``) implements it.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor


@runtime_checkable
class CameraBatch(Protocol):
    """What a denoiser may read of the cameras it is conditioned on (``sdi.scene.cameras.Cameras``
    is one): a batch of B cameras with unit view directions from the object to each camera."""

    def __len__(self) -> int: ...

    def view_directions(self) -> Tensor: ...


@runtime_checkable
class Denoiser(Protocol):
    """A discrete-time eps-predicting diffusion model.

    ``alphas_cumprod``: (T,) a(t) of its schedule. ``predict_eps(x_t, t, prompts, cameras)``: x_t (B, C, H, W),
    t (B,) int64, one noise prediction per prompt for the whole batch -> (len(prompts), B, C, H, W).
    The empty prompt "" is the unconditional branch. ``cameras``: the B cameras the images are seen
    from (a ``CameraBatch``, e.g. ``sdi.scene.cameras.Cameras``), or None. View-aware priors read
    what they need: Stable Diffusion the view direction (view prompts), the embedded prior the whole
    camera; others ignore it. ``encode``/``decode`` map images in [-1, 1] (B, 3, H, W) to the space
    the model diffuses in and back (identity for pixel-space priors); distillation runs in that space,
    with gradients through ``encode``.
    """

    alphas_cumprod: Tensor

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[str], cameras: CameraBatch | None = None
    ) -> Tensor: ...

    def encode(self, image: Tensor) -> Tensor: ...

    def decode(self, latent: Tensor) -> Tensor: ...


class CountingDenoiser:
    """Wraps a Denoiser and counts network evaluations (one per prompt branch per batch item)."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.alphas_cumprod = inner.alphas_cumprod
        self.calls = 0  # batched calls
        self.evaluations = 0  # branch x image evaluations

    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[str], cameras: CameraBatch | None = None
    ) -> Tensor:
        self.calls += 1
        self.evaluations += len(prompts) * x_t.shape[0]
        return self.inner.predict_eps(x_t, t, prompts, cameras)

    def encode(self, image: Tensor) -> Tensor:
        return self.inner.encode(image)

    def decode(self, latent: Tensor) -> Tensor:
        return self.inner.decode(latent)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
