"""Classifier-free guidance (Ho & Salimans 2022; paper Eq. 3), written once for every prior and rule.

A ``Guidance`` says how the prior's branches are combined; the scale s is given per call, so an
SDI rule's inversion (s = -7.5) and forward call (s = 7.5) share one form:

- plain CFG: eps = anchor + s (eps_c - eps_u), anchor eps_u (Eq. 3) or eps_c (threestudio's form
  without Perp-Neg, the authors' code's quirk: an effective scale s + 1);
- Perp-Neg (``sdi.diffusion.perp_neg``): eps_u + s (e_pos + sum_k w_k perp(e_k, e_pos)), the
  positive view prompt interpolated by azimuth. A prior without free text (the embedded priors:
  conditioned on the camera, no view prompts to interpolate or push away from) runs Eq. 3 CFG
  instead, which is Perp-Neg with every negative weight 0, as threestudio does at overhead views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch, Denoiser, has_free_text
from sdi.diffusion.perp_neg import perp_neg_eps

Anchor = Literal["uncond", "cond"]


@dataclass(frozen=True)
class Guidance:
    """How the branches are combined (the scale is the caller's)."""

    perp_neg: Literal["off", "embeddings", "predictions"] = "off"
    """Perp-Neg: "embeddings" mixes the view prompts' text embeddings before the network (threestudio, the
    authors' SDI; 4 branches); "predictions" mixes the view prompts' predictions (a variant; 5 branches).
    Priors without free text run Eq. 3 CFG instead (see the module docstring)."""
    anchor: Anchor = "uncond"
    """Plain CFG only: eps = anchor + s (eps_c - eps_u); "uncond" is Eq. 3, "cond" threestudio's quirk."""
    negative: str = ""
    """Prompt of the negative branch ("" = unconditional)."""


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float, anchor: Anchor = "uncond") -> Tensor:
    """eps = anchor + s (eps_c - eps_u): s = 0 anchor alone, s < 0 pushes away (SDI's inversion)."""
    return (eps_cond if anchor == "cond" else eps_uncond) + scale * (eps_cond - eps_uncond)


def guided_eps(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    prompt: str,
    scale: float,
    cameras: CameraBatch | None = None,
    guidance: Guidance = Guidance(),
) -> Tensor:
    """Guided noise prediction, every branch in one batched call (one branch where the other drops out)."""
    if guidance.perp_neg != "off" and has_free_text(denoiser):
        if scale == 0.0:
            return denoiser.predict_eps(x_t, t, [guidance.negative], cameras)[0]
        return perp_neg_eps(denoiser, x_t, t, prompt, scale, cameras, guidance.negative, guidance.perp_neg)
    anchor = guidance.anchor if guidance.perp_neg == "off" else "uncond"
    if scale == 0.0 or (scale == 1.0 and anchor == "uncond"):
        alone = guidance.negative if scale == 0.0 and anchor == "uncond" else prompt
        return denoiser.predict_eps(x_t, t, [alone], cameras)[0]
    eps_c, eps_u = denoiser.predict_eps(x_t, t, [prompt, guidance.negative], cameras)
    return cfg_combine(eps_u, eps_c, scale, anchor)


def eps_fn_for(
    denoiser: Denoiser, prompt: str, scale: float, cameras: CameraBatch | None = None, guidance: Guidance = Guidance()
):
    """Bind a prompt, scale and guidance: returns ``eps_fn(x, t)`` for the DDIM functions."""
    return lambda x, t: guided_eps(denoiser, x, t, prompt, scale, cameras, guidance)
