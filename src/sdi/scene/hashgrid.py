"""Multiresolution hash encoding (Instant-NGP, Mueller et al. 2022), pure PyTorch, with a fused backward.

Level l has resolution N_l = floor(base b^l) (Eq. 2-3); a point x in [0, 1]^3 blends the features of
the 8 corners of its cell at every level with trilinear weights; a corner's entry is its dense index
when the level fits in the table, else the spatial hash XOR_i (c_i pi_i) mod T (Eq. 4).

Two ways to differentiate the same forward:

- ``hash_encode_level`` per level through autograd (the reference; also differentiable w.r.t. the
  points, which autograd normals need). Autograd keeps each level's (N, 8) indices, weights and
  gathered features: ~160 bytes per point and level, 2.5 KB per point for 16 levels.
- ``fused_hash_encode``: a custom autograd function that keeps only the points (12 bytes each) and
  recomputes each level's corners in the backward, scattering the output gradient into the tables with
  ``index_add_`` (what tiny-cuda-nn does in one kernel). The tables get exact gradients; the points
  get none (finite-difference normals need none). ``torch.compile`` traces it without graph breaks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sdi.scene.fields import HashGridFieldConfig

# Instant-NGP's spatial hash primes (the first one is 1 so that level 0 behaves like a dense grid).
_PRIMES = (1, 2654435761, 805459861)
_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])  # (8, 3)


def level_resolutions(cfg: HashGridFieldConfig) -> list[int]:
    """Grid resolution N_l = floor(base * b^l) of each level (Instant-NGP Eq. 2-3)."""
    return [int(math.floor(cfg.base_resolution * cfg.per_level_scale**lvl)) for lvl in range(cfg.n_levels)]


def hash_coords(corners: Tensor, table_size: int) -> Tensor:
    """Integer corners (..., 3) -> table indices (...,): XOR of coordinate x prime, mod T
    (Instant-NGP Eq. 4; T is a power of two so mod is a bit mask)."""
    h = corners[..., 0] * _PRIMES[0]
    h = torch.bitwise_xor(h, corners[..., 1] * _PRIMES[1])
    h = torch.bitwise_xor(h, corners[..., 2] * _PRIMES[2])
    return h & (table_size - 1)


def _corner_indices(corners: Tensor, res: int, table_size: int) -> Tensor:
    """Dense (one-to-one) indexing when the level fits in the table, else the spatial hash."""
    if (res + 1) ** 3 <= table_size:
        return (corners[..., 0] * (res + 1) + corners[..., 1]) * (res + 1) + corners[..., 2]
    return hash_coords(corners, table_size)


def level_corners(x01: Tensor, res: int, table_size: int, offsets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Table indices (N, 8) and trilinear weights (N, 8) of the cell corners of points (N, 3) in [0, 1]^3
    at a level of resolution ``res``. ``offsets``: the (8, 3) int64 corner offsets on the points' device
    (pass a buffer to avoid copying them there on every call)."""
    offsets = _CORNERS.to(x01.device) if offsets is None else offsets
    pos = x01 * res
    lo = pos.floor().clamp(0, res - 1)
    frac = pos - lo  # (N, 3)
    idx = _corner_indices(lo.long()[:, None, :] + offsets, res, table_size)  # (N, 8)
    w = torch.where(offsets.bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)  # (N, 8)
    return idx, w


def hash_encode_level(x01: Tensor, table: Tensor, res: int, offsets: Tensor | None = None) -> Tensor:
    """One level: points in [0, 1]^3 (N, 3), table (T, F) -> (N, F) trilinear blend of the 8 corners."""
    idx, w = level_corners(x01, res, table.shape[0], offsets)
    return (table[idx] * w[..., None]).sum(1)


class _FusedHashEncoding(torch.autograd.Function):
    """Forward as ``hash_encode_level`` at every level; backward recomputes the corners (saves only x)."""

    @staticmethod
    def forward(ctx, x01: Tensor, tables: Tensor, offsets: Tensor, resolutions: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x01, offsets)
        ctx.resolutions, ctx.table_shape = resolutions, tuple(tables.shape)
        feats = [hash_encode_level(x01, tables[lvl], res, offsets) for lvl, res in enumerate(resolutions)]
        return torch.cat(feats, dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x01, offsets = ctx.saved_tensors
        n_levels, table_size, n_features = ctx.table_shape
        grad_tables = grad.new_zeros(ctx.table_shape)
        for lvl, res in enumerate(ctx.resolutions):
            idx, w = level_corners(x01, res, table_size, offsets)
            g = grad[:, lvl * n_features:(lvl + 1) * n_features]  # (N, F)
            contrib = (w[..., None] * g[:, None, :]).reshape(-1, n_features)  # (N 8, F)
            grad_tables[lvl].index_add_(0, idx.reshape(-1), contrib)
        return None, grad_tables, None, None


def fused_hash_encode(x01: Tensor, tables: Tensor, resolutions: tuple[int, ...], offsets: Tensor) -> Tensor:
    """(N, 3) points in [0, 1]^3, tables (L, T, F) -> (N, L F), differentiable w.r.t. the tables only;
    ``offsets`` as in ``level_corners``."""
    return _FusedHashEncoding.apply(x01, tables, offsets, tuple(resolutions))


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding (Instant-NGP), pure PyTorch: (N, 3) in [0, 1]^3 -> (N, L * F).

    ``fused`` (default): the memory-light backward of ``fused_hash_encode`` whenever the points need
    no gradient; points that require grad (autograd normals) take the plain autograd path."""

    def __init__(self, cfg: HashGridFieldConfig, fused: bool = True):
        super().__init__()
        self.resolutions = tuple(level_resolutions(cfg))
        self.table_size = 2**cfg.log2_hashmap_size
        self.fused = fused
        shape = (cfg.n_levels, self.table_size, cfg.n_features_per_level)
        # Instant-NGP initialises the tables with U(-1e-4, 1e-4).
        self.tables = nn.Parameter(torch.empty(shape).uniform_(-1e-4, 1e-4))
        self.register_buffer("corner_offsets", _CORNERS.clone(), persistent=False)  # moves with .to(device)
        self.out_dim = cfg.n_levels * cfg.n_features_per_level

    def forward(self, x01: Tensor) -> Tensor:
        """(N, 3) points in [0, 1]^3 -> (N, L * F) concatenated level features."""
        if self.fused and not x01.requires_grad:
            return fused_hash_encode(x01, self.tables, self.resolutions, self.corner_offsets)
        feats = [hash_encode_level(x01, self.tables[lvl], res, self.corner_offsets)
                 for lvl, res in enumerate(self.resolutions)]
        return torch.cat(feats, dim=-1)
