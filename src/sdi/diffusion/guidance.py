"""Classifier-free guidance (Ho & Salimans 2022; paper Eq. 3), written once for every prior."""

from __future__ import annotations

from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch, Denoiser


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """eps = eps_u + s (eps_c - eps_u): s = 0 unconditional, 1 conditional, < 0 pushes away (SDI's inversion)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_eps(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    prompt: str,
    scale: float,
    cameras: CameraBatch | None = None,
    negative: str = "",
) -> Tensor:
    """Guided noise prediction; both branches in one batched call, one branch when s is 0 or 1."""
    if scale == 1.0:
        return denoiser.predict_eps(x_t, t, [prompt], cameras)[0]
    if scale == 0.0:
        return denoiser.predict_eps(x_t, t, [negative], cameras)[0]
    eps_c, eps_u = denoiser.predict_eps(x_t, t, [prompt, negative], cameras)
    return cfg_combine(eps_u, eps_c, scale)


def eps_fn_for(
    denoiser: Denoiser, prompt: str, scale: float, cameras: CameraBatch | None = None, negative: str = ""
):
    """Bind a prompt and scale: returns ``eps_fn(x, t)`` for the DDIM functions."""
    return lambda x, t: guided_eps(denoiser, x, t, prompt, scale, cameras, negative)
