"""View-dependent prompts and Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968), as in threestudio.

Notation: eps_u the unconditional prediction, delta_x = eps_x - eps_u a prompt's guidance direction,
s the guidance scale, w_k >= 0 the weight that pushes away from negative prompt k:

    eps = eps_u + s (delta_pos - sum_k w_k perp(delta_neg_k, delta_pos)),
    perp(a, b) = a - (<a, b> / |b|^2) b            (per sample).

The whole guidance term is multiplied by s, so SDI's inversion with s = -7.5 flips the Perp-Neg
terms together with delta_pos, as the authors' code does (PAPER.md). threestudio stores the
weights negated (-w_k) and adds them; the result is the same.

Views are unit vectors from the object to the camera, y up; azimuth is measured from +z towards
+x, elevation from the xz-plane.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from sdi.diffusion.guidance import cfg_combine
from sdi.diffusion.denoiser import CameraBatch, Denoiser

VIEW_NAMES = ("front", "side", "back", "overhead")
OVERHEAD_ELEVATION_DEG = 60.0


def view_prompt(prompt: str, view: str) -> str:
    """DreamFusion's view suffix: "a cat" -> "a cat, front view"."""
    return f"{prompt}, {view} view"


def has_view_suffix(prompt: str) -> bool:
    """Whether a prompt already names a view (then priors leave it alone)."""
    return any(prompt.endswith(view_prompt("", v)) for v in VIEW_NAMES)


def view_angles(views: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 3) directions -> elevation and azimuth in degrees, azimuth in (-180, 180], 0 = +z (front)."""
    v = torch.nn.functional.normalize(views.double(), dim=-1)
    elevation = torch.rad2deg(torch.asin(v[:, 1].clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(v[:, 0], v[:, 2]))
    return elevation, azimuth


def view_bins(views: Tensor) -> list[str]:
    """DreamFusion's bins: overhead above 60 deg elevation, else front |az| < 45, back |az| > 135, else side."""
    elevation, azimuth = view_angles(views)
    names = []
    for ele, az in zip(elevation.tolist(), azimuth.abs().tolist()):
        if ele > OVERHEAD_ELEVATION_DEG:
            names.append("overhead")
        else:
            names.append("front" if az < 45 else "back" if az > 135 else "side")
    return names


def perpendicular(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """perp(a, b) = a - (<a, b> / |b|^2) b, the part of a orthogonal to b, per sample (dim 0 = batch)."""
    dot = (a * b).flatten(1).sum(1)
    norm2 = (b * b).flatten(1).sum(1).clamp(min=eps)
    return a - (dot / norm2).view(-1, *[1] * (a.ndim - 1)) * b


def perp_neg_combine(eps_uncond: Tensor, eps_pos: Tensor, eps_neg: Tensor, weights: Tensor, scale: float) -> Tensor:
    """eps_u + s (delta_pos - sum_k w_k perp(delta_neg_k, delta_pos)).

    eps_uncond, eps_pos (B, ...); eps_neg (K, B, ...); weights (B, K), >= 0 pushes away from prompt k.
    With all weights 0 this is ``cfg_combine``; s < 0 negates the whole guidance term.
    """
    if eps_neg.shape[0] != weights.shape[1]:
        raise ValueError(f"{eps_neg.shape[0]} negative predictions for {weights.shape[1]} weight columns")
    delta_pos = eps_pos - eps_uncond
    push = torch.zeros_like(delta_pos)
    for k in range(eps_neg.shape[0]):
        w = weights[:, k].to(delta_pos).view(-1, *[1] * (delta_pos.ndim - 1))
        push = push + w * perpendicular(eps_neg[k] - eps_uncond, delta_pos)
    return cfg_combine(eps_uncond, eps_uncond + delta_pos - push, scale)


def _decay(a: float, b: float, c: float, r: Tensor) -> Tensor:
    """threestudio's shifted exponential decay a exp(-b r) + c."""
    return a * torch.exp(-b * r) + c


# threestudio's defaults (prompt_processors/base.py): (a, b, c) with a exp(-b r) + c.
F_FS = (4.0, 0.5, -2.426)  # weight of "front" as a negative in the front-side sector; ~0 at the front
F_SF = (4.0, 0.5, -2.426)  # weight of "side" as a negative in the front-side sector; ~0 at the side
F_SB = (1.0, 0.5, -0.606)  # weight of "side" as a negative in the side-back sector; ~0 at the side
F_FSB = (1.0, 0.5, 0.967)  # weight of "front" as a negative in the side-back sector


def perp_neg_weights(views: Tensor) -> tuple[Tensor, Tensor]:
    """threestudio's view interpolation: (B, 3) directions -> (pos, neg), each (B, 4) over VIEW_NAMES.

    Front-side sector (|az| < 90): r = 1 - |az| / 90; positive r front + (1 - r) side; negatives front
    with F_FS(r) and side with F_SF(1 - r). Side-back sector: r = 2 - |az| / 90; positive r side +
    (1 - r) back; negatives side with F_SB(r) and front with F_FSB(r). Overhead (elevation > 60 deg):
    positive overhead, no negatives. threestudio interpolates the positive *text embeddings*; the
    Denoiser protocol takes prompts, so ``perp_neg_eps`` interpolates the positive *predictions*
    instead (delta_pos = sum_j pos_j delta_j), which is exact at the four bin centres.
    """
    elevation, azimuth = view_angles(views)
    az = azimuth.abs().float()
    front_sector = az < 90
    r = torch.where(front_sector, 1 - az / 90, 2 - az / 90)
    zero = torch.zeros_like(r)
    pos = torch.stack(
        [
            torch.where(front_sector, r, zero),
            torch.where(front_sector, 1 - r, r),
            torch.where(front_sector, zero, 1 - r),
            zero,
        ],
        dim=1,
    )
    neg = torch.stack(
        [
            torch.where(front_sector, _decay(*F_FS, r), _decay(*F_FSB, r)),
            torch.where(front_sector, _decay(*F_SF, 1 - r), _decay(*F_SB, r)),
            zero,
            zero,
        ],
        dim=1,
    )
    overhead = (elevation > OVERHEAD_ELEVATION_DEG).unsqueeze(1)
    pos = torch.where(overhead, pos.new_tensor([0.0, 0.0, 0.0, 1.0]), pos)
    neg = torch.where(overhead, torch.zeros_like(neg), neg)
    return pos, neg


def perp_neg_eps(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    prompt_parts: str | Sequence[str],
    scale: float,
    cameras: CameraBatch,
    weights: tuple[Tensor, Tensor] | None = None,
    negative: str = "",
) -> Tensor:
    """Perp-Neg guided eps (B, C, H, W) in ONE batched call over the view prompts in use plus ``negative``.

    ``prompt_parts``: a base prompt (suffixed with ", front view" etc.) or the four view prompts in
    VIEW_NAMES order. ``weights``: (pos, neg) (B, 4) each, by default ``perp_neg_weights(views)``.
    Pass s = -7.5 for SDI's inversion: every guidance term, the Perp-Neg ones included, flips sign.
    """
    if cameras is None:
        raise ValueError("Perp-Neg needs the cameras the images are seen from")
    parts = [view_prompt(prompt_parts, v) for v in VIEW_NAMES] if isinstance(prompt_parts, str) else list(prompt_parts)
    if len(parts) != len(VIEW_NAMES):
        raise ValueError(f"prompt_parts needs one prompt per view {VIEW_NAMES}, got {len(parts)}")
    pos, neg = perp_neg_weights(cameras.view_directions()) if weights is None else weights
    used = [j for j in range(len(parts)) if bool((pos[:, j] != 0).any() or (neg[:, j] != 0).any())]
    eps = denoiser.predict_eps(x_t, t, [parts[j] for j in used] + [negative], cameras)
    eps_u, eps_views = eps[-1], eps[:-1]
    pos_w = pos[:, used].T.to(eps).view(len(used), -1, *[1] * (x_t.ndim - 1))
    eps_pos = eps_u + (pos_w * (eps_views - eps_u)).sum(0)
    return perp_neg_combine(eps_u, eps_pos, eps_views, neg[:, used].to(eps), scale)
