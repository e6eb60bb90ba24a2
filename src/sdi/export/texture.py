"""UV atlas (xatlas) and albedo texture baked from the field, without a rasterizer.

A texel's colour is the field's albedo at the texel's own 3D surface point: the UV triangles are
scanned in texture space (texel centres at ``(i + 0.5) / size``), each covered texel gets the
barycentric blend of its triangle's 3D corners, and ``color_fn`` is evaluated there. Texels no
triangle covers (gutters between charts) take the colour of the nearest covered texel, so bilinear
filtering and mipmaps at chart borders do not bleed background into the surface.

UV convention: trimesh's (and OBJ's) ``v = 0`` at the bottom row of the image; texel row ``r``
is ``v = 1 - (r + 0.5) / size``. trimesh flips ``v`` when it writes glTF (``v = 0`` at the top).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

TEXEL_EPSILON = 1e-5
"""Barycentric slack: texel centres on a shared edge belong to both triangles, never to neither."""


@dataclass(frozen=True)
class UVMesh:
    """A mesh cut along its UV seams: ``vertices`` (V', 3), ``faces`` (F, 3), ``uv`` (V', 2) in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    source_vertex: np.ndarray
    """(V',) index of each vertex in the uncut mesh (xatlas' vmapping)."""


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2) -> UVMesh:
    """Charts and packing by xatlas for a ``texture_size`` square texture, ``padding`` texels between charts."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = texture_size, padding, True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, new_faces, uv = atlas[0]
    return UVMesh(np.asarray(vertices)[vmapping], new_faces.astype(np.int64), uv.astype(np.float32),
                  vmapping.astype(np.int64))


def texel_coordinates(uv: Tensor, size: int) -> Tensor:
    """UV (..., 2) -> continuous texel coordinates (..., 2) as (column, row), texel centres at integers."""
    return torch.stack([uv[..., 0] * size - 0.5, (1 - uv[..., 1]) * size - 0.5], dim=-1)


def _barycentric(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Barycentric coordinates (N, 3) of 2D points p (N, 2) in triangles a, b, c (N, 2); NaN-free for slivers."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return torch.stack([1 - wb - wc, wb, wc], dim=-1)


def scan_triangles(corners: Tensor, height: int, width: int, chunk: int = 65536) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels whose centre lies in a 2D triangle: flat pixel index (K,), triangle (K,), barycentrics (K, 3).

    ``corners`` (F, 3, 2) are (column, row) pixel coordinates with pixel centres at integers. Each
    triangle's pixel bounding box is enumerated (tiny for a mesh's many small triangles) and its pixel
    centres are kept where all barycentrics are >= -``TEXEL_EPSILON``. A pixel may come back once per
    triangle covering it.
    """
    limit = corners.new_tensor([width - 1, height - 1])
    lo = torch.minimum(corners.amin(1).ceil().clamp(min=0), limit).long()
    hi = torch.minimum(corners.amax(1).floor(), limit).long()
    extent = (hi - lo + 1).clamp(min=0)
    out = []
    for start in range(0, len(corners), chunk):
        sl = slice(start, start + chunk)
        width_, count = extent[sl, 0].clamp(min=1), extent[sl].prod(1)
        local = torch.repeat_interleave(torch.arange(len(count)), count)
        offset = torch.arange(int(count.sum())) - torch.repeat_interleave(count.cumsum(0) - count, count)
        col = lo[sl][local, 0] + offset % width_[local]
        row = lo[sl][local, 1] + offset // width_[local]
        tri = corners[sl][local]
        bary = _barycentric(torch.stack([col, row], -1).to(corners.dtype), tri[:, 0], tri[:, 1], tri[:, 2])
        keep = (bary >= -TEXEL_EPSILON).all(-1)
        out.append((row[keep] * width + col[keep], local[keep] + start, bary[keep]))
    return tuple(torch.cat(parts) for parts in zip(*out))


def rasterize_uv(uv: Tensor, faces: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Texels of a ``size`` square texture whose centre lies in a UV triangle (``scan_triangles``)."""
    return scan_triangles(texel_coordinates(uv, size)[faces], size, size)


def fill_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) with every uncovered texel set to its nearest covered texel's value."""
    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


@torch.no_grad()
def bake_albedo(uv_mesh: UVMesh, color_fn, size: int, device: str | torch.device = "cpu",
                chunk: int = 262144) -> np.ndarray:
    """A ``size`` x ``size`` uint8 RGB texture of ``color_fn`` ((N, 3) points -> (N, 3) in [0, 1]) at each
    covered texel's surface point, gutters filled from the nearest covered texel."""
    uv, faces = torch.from_numpy(uv_mesh.uv), torch.from_numpy(uv_mesh.faces)
    texel, face, bary = rasterize_uv(uv, faces, size)
    corners = torch.from_numpy(np.asarray(uv_mesh.vertices, np.float32))[faces[face]]  # (K, 3, 3)
    points = (bary[..., None] * corners).sum(1)
    colors = torch.cat([color_fn(p.to(device)).float().cpu() for p in points.split(chunk)])
    image = torch.zeros(size * size, 3)
    image[texel] = colors.clamp(0, 1)
    covered = torch.zeros(size * size, dtype=torch.bool)
    covered[texel] = True
    image = image.view(size, size, 3).mul(255).round().to(torch.uint8).numpy()
    return fill_gutters(image, covered.view(size, size).numpy())
