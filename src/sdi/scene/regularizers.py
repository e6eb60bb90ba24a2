"""Geometry regularizers for text-to-3D, as pure functions of a RenderOutput (or its images).

Loss weights and step windows (e.g. convexity: weight 0.1 for the first 40% of the steps, SDI
paper Sec. 5) are the caller's business.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sdi.scene.renderer import RenderOutput


def orientation_loss(out: RenderOutput) -> Tensor:
    """DreamFusion Eq. (orientation): sum_i stopgrad(w_i) max(0, n_i . d)^2 per ray, where d is the
    ray direction (camera -> scene), so normals facing away from the camera are penalised;
    averaged over rays with non-zero opacity (as threestudio)."""
    if out.sample_normals is None:
        raise ValueError("orientation_loss needs normals: render with normals='autograd' or 'finite_difference'")
    d = out.directions.reshape(-1, 3)[out.ray_indices]  # (K, 3)
    facing = (out.sample_normals * d).sum(-1).clamp(min=0.0)
    total = (out.sample_weights.detach() * facing.square()).sum()
    n_hit = (out.opacity > 0).sum().clamp(min=1)
    return total / n_hit


def sparsity_loss(out: RenderOutput) -> Tensor:
    """Mean opacity, smoothed as sqrt(o^2 + 0.01) (threestudio's lambda_sparsity term)."""
    return (out.opacity.square() + 0.01).sqrt().mean()


def opacity_loss(out: RenderOutput, eps: float = 1e-5) -> Tensor:
    """Binary entropy of the opacity, -(o log o + (1 - o) log(1 - o)), pushing every pixel to
    be fully opaque or fully transparent (threestudio's lambda_opaque term)."""
    o = out.opacity.clamp(eps, 1.0 - eps)  # written out: F.binary_cross_entropy(o, o) checks its input's range,
    return -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()  # which raises on a NaN (a device assert on CUDA)


def z_variance_loss(out: RenderOutput, min_opacity: float = 0.5) -> Tensor:
    """Weighted variance of the sample depth along each ray, sum_i w_i (t_i - z)^2 with
    z = sum_i w_i t_i / sum_i w_i, averaged over rays with opacity > min_opacity (threestudio's
    lambda_z_variance term, which centres on the undivided depth; they agree for opaque rays)."""
    opacity = out.weights.sum(-1, keepdim=True)
    z = (out.weights * out.t_mids).sum(-1, keepdim=True) / opacity.clamp(min=1e-6)
    var = (out.weights * (out.t_mids - z).square()).sum(-1)  # (B, H, W)
    mask = (opacity[..., 0] > min_opacity).to(var.dtype)  # a masked mean without packing: no host sync
    return (var * mask).sum() / mask.sum().clamp(min=1.0)


def image_axes(directions: Tensor) -> tuple[Tensor, Tensor]:
    """Camera right and up axes (B, 3) in world space, read off the ray directions (B, H, W, 3):
    right = normalize(mean last column - mean first column), up = normalize(top row - bottom row)."""
    right = directions[:, :, -1].mean(1) - directions[:, :, 0].mean(1)
    up = directions[:, 0].mean(1) - directions[:, -1].mean(1)
    return F.normalize(right, dim=-1), F.normalize(up, dim=-1)


def neighbour_sines(normals_image: Tensor, right: Tensor, up: Tensor, size: int = 8) -> tuple[Tensor, Tensor]:
    """Signed sines between neighbouring normals of the map pooled to size x size.

    Horizontal: (n_left x n_right) . up, shape (B, size, size - 1). Vertical:
    (n_top x n_bottom) . right, shape (B, size - 1, size). Both are positive when the normals fan
    out as on a convex surface seen from the camera (a sphere: the left normal points left, the
    right one right, the top one up), negative on a concave one and 0 on planes or background
    (whose composited normal is 0)."""
    n = F.normalize(F.adaptive_avg_pool2d(normals_image, size), dim=1)  # (B, 3, s, s)
    up_ = up[:, :, None, None]
    right_ = right[:, :, None, None]
    horiz = (torch.cross(n[..., :, :-1], n[..., :, 1:], dim=1) * up_).sum(1)
    vert = (torch.cross(n[..., :-1, :], n[..., 1:, :], dim=1) * right_).sum(1)
    return horiz, vert


def convexity_loss(
    normals_image: Tensor,
    right: Tensor | None = None,
    up: Tensor | None = None,
    size: int = 8,
) -> Tensor:
    """SDI paper's convexity regularizer: pool the normal map (B, 3, H, W) to size x size and
    penalise negative signed sines between left-right and top-bottom neighbours,
    mean(relu(-sin)) over both directions (see :func:`neighbour_sines` for the sign).

    ``right`` and ``up`` (B, 3) are the camera axes in the normals' frame: pass world-space
    normals with :func:`image_axes` of the render's directions; left as None they default to
    camera space (x right, y up, normals towards the viewer along +z)."""
    b = normals_image.shape[0]
    if right is None:
        right = normals_image.new_tensor([1.0, 0.0, 0.0]).expand(b, 3)
    if up is None:
        up = normals_image.new_tensor([0.0, 1.0, 0.0]).expand(b, 3)
    horiz, vert = neighbour_sines(normals_image, right, up, size)
    return 0.5 * (F.relu(-horiz).mean() + F.relu(-vert).mean())
