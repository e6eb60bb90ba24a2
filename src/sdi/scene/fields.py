"""Radiance fields (density + albedo) and backgrounds for text-to-3D, in pure PyTorch.

Every field maps world points ``(N, 3)`` to a :class:`FieldOutput` (density ``(N,)`` >= 0 and
albedo ``(N, 3)`` in [0, 1]) and exposes ``density(points) -> (N,)`` for the occupancy grid and
for normals. The renderer (``renderer.py``) takes the field as a callback.

Density follows DreamFusion / threestudio: ``density = act(pre + blob(x))`` with the centre blob
``blob(x) = blob_scale * (1 - |x| / blob_std)`` so that training starts from a ball at the centre.

CPU timings that chose :class:`GridField` (786k points = 4 views x 64^2 x 48 samples, forward +
backward of a scalar loss w.r.t. the parameters; torch 2.13, one thread, best of 3 on a shared
2-core machine, so +-30%):

=====================================  =========  ===========
encoding                               ms / pass  Mpoints / s
=====================================  =========  ===========
dense grid 32^3 x 4, grid_sample       177        4.4
dense grid 48^3 x 4, grid_sample       220        3.6
dense grid 64^3 x 4, grid_sample       512        1.5
dense grid 48^3, 8-corner gather (*)   ~1800      0.4
triplane 64^2 x 8, linear decode       291        2.7
triplane 128^2 x 8, linear decode      328        2.4
triplane 64^2 x 8, MLP(32) decode      959        0.8
hash grid L8 x 2, T 2^15 (encoding)    --         0.20
hash grid L16 x 2, T 2^19 (encoding)   --         0.07
=====================================  =========  ===========

(*) measured in an earlier two-thread run, where grid_sample on 48^3 took ~490-730 ms.

The dense 48^3 grid read by ``F.grid_sample`` (no MLP: the 4 channels are density and albedo
logits) beats the cheapest triplane, needs no decoder, and its resolution is the scene
resolution, so it is the default; it also gives cheap normals (:meth:`GridField.normals`).
The pure-PyTorch hash grid (:class:`HashGridField`) is 20-50x slower on CPU and meant for GPU runs
(``use_tcnn``) or for matching the paper's reference configuration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdi.scene.hashgrid import HashGridEncoding

# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DensityConfig:
    """How raw density logits become a non-negative density."""

    activation: Literal["softplus", "exp"] = "softplus"
    """"softplus" (threestudio's shifted softplus, softplus(x - 1)) or "exp" (trunc_exp, Instant-NGP)."""
    blob_scale: float = 10.0
    """Height of the initial centre blob added to the density logits (DreamFusion / Magic3D)."""
    blob_std: float = 0.5
    """Radius scale of the blob: the bias is blob_scale * (1 - |x| / blob_std)."""


@dataclass
class FieldOutput:
    """What a field returns for a batch of points."""

    density: Tensor
    """(N,) non-negative volume density sigma."""
    albedo: Tensor
    """(N, 3) albedo in [0, 1]."""


class _TruncExp(torch.autograd.Function):
    """exp with its gradient computed from a clamped input (Instant-NGP's trunc_exp)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp(x) whose backward clamps x at 15 to avoid overflowing gradients."""
    return _TruncExp.apply(x)


def density_blob(points: Tensor, cfg: DensityConfig) -> Tensor:
    """(N, 3) -> (N,) blob bias blob_scale * (1 - |x| / blob_std) (threestudio "blob_magic3d")."""
    return cfg.blob_scale * (1.0 - points.norm(dim=-1) / cfg.blob_std)


def activate_density(pre: Tensor, points: Tensor, cfg: DensityConfig) -> Tensor:
    """Density logits (N,) at points (N, 3) -> density (N,), with the centre blob added."""
    pre = pre + density_blob(points, cfg)
    if cfg.activation == "softplus":
        return F.softplus(pre - 1.0)
    if cfg.activation == "exp":
        return trunc_exp(pre)
    raise ValueError(f"unknown density activation {cfg.activation!r}; use 'softplus' or 'exp'")


# --------------------------------------------------------------------------------------------
# Dense grid (CPU default)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridFieldConfig:
    """Dense voxel grid of density and albedo logits, trilinearly interpolated."""

    resolution: int = 48
    """Voxels per side of the grid that spans [-bound, bound]^3."""
    bound: float = 1.0
    """Half side of the axis-aligned box the grid covers; outside it the logits are 0."""
    init_std: float = 0.01
    """Std of the Gaussian initialisation of the logits (the blob gives the initial shape)."""
    density: DensityConfig = field(default_factory=DensityConfig)
    """Density activation and initial blob."""


class GridField(nn.Module):
    """Dense ``(1 + 3, R, R, R)`` grid read with ``F.grid_sample``: channel 0 is the density logit,
    channels 1-3 the albedo logits (sigmoid). Fastest field on CPU (see the module docstring)."""

    def __init__(self, cfg: GridFieldConfig = GridFieldConfig()):
        super().__init__()
        self.cfg = cfg
        r = cfg.resolution
        self.grid = nn.Parameter(cfg.init_std * torch.randn(1, 4, r, r, r))

    def _logits(self, points: Tensor, channels: slice) -> Tensor:
        """(N, 3) -> (N, C) interpolated logits of the chosen channels."""
        coords = (points / self.cfg.bound).view(1, -1, 1, 1, 3)
        out = F.grid_sample(self.grid[:, channels], coords, align_corners=True, padding_mode="zeros")
        return out.view(out.shape[1], -1).t()

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density."""
        return activate_density(self._logits(points, slice(0, 1))[:, 0], points, self.cfg.density)

    def logit_gradient_grid(self) -> Tensor:
        """(1, 3, R, R, R) central differences (d/dx, d/dy, d/dz) of the density-logit grid;
        grid_sample's x, y, z index the last, middle and first spatial dims."""
        h = 2.0 * self.cfg.bound / (self.cfg.resolution - 1)
        p = F.pad(self.grid[:, :1], (1, 1, 1, 1, 1, 1), mode="replicate")
        gx = p[..., 1:-1, 1:-1, 2:] - p[..., 1:-1, 1:-1, :-2]
        gy = p[..., 1:-1, 2:, 1:-1] - p[..., 1:-1, :-2, 1:-1]
        gz = p[..., 2:, 1:-1, 1:-1] - p[..., :-2, 1:-1, 1:-1]
        return torch.cat([gx, gy, gz], dim=1) / (2 * h)

    def normals(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N, 3) normals -normalize(grad(logit + blob)): the logit gradient is the
        trilinear interpolation of the grid's central differences (one grid_sample, no double
        backward), the blob gradient is analytic. The activation is monotonic, so this is the
        direction of -grad sigma. Differentiable w.r.t. the grid, so normal losses train it."""
        coords = (points / self.cfg.bound).view(1, -1, 1, 1, 3)
        g = F.grid_sample(self.logit_gradient_grid(), coords, align_corners=True, padding_mode="zeros")
        grad = g.view(3, -1).t()
        d = self.cfg.density
        grad = grad - d.blob_scale / d.blob_std * F.normalize(points, dim=-1)
        return -F.normalize(grad, dim=-1)

    def forward(self, points: Tensor) -> FieldOutput:
        """(N, 3) -> FieldOutput with density (N,) and albedo (N, 3)."""
        logits = self._logits(points, slice(0, 4))
        density = activate_density(logits[:, 0], points, self.cfg.density)
        return FieldOutput(density=density, albedo=torch.sigmoid(logits[:, 1:]))


# --------------------------------------------------------------------------------------------
# Multiresolution hash grid (Instant-NGP)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HashGridFieldConfig:
    """Instant-NGP hash encoding + small MLP. Defaults are a CPU-sized version of the paper's
    threestudio config (see :func:`hash_grid_paper_config`)."""

    n_levels: int = 8
    """Number of resolution levels L (threestudio: 16)."""
    n_features_per_level: int = 2
    """Features F stored per table entry (threestudio: 2)."""
    log2_hashmap_size: int = 15
    """log2 of the table size T per level (threestudio: 19)."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level (threestudio: 16)."""
    per_level_scale: float = 1.447269237440378
    """Resolution growth factor b between levels (threestudio: 1.4473, i.e. 16 -> 4096 in 16 levels)."""
    hidden_dim: int = 64
    """Width of the MLP decoding the features (threestudio: 64)."""
    n_hidden_layers: int = 1
    """Hidden layers of the decoder MLP (threestudio: 1)."""
    bound: float = 1.0
    """Half side of the box mapped to the unit cube of the encoding."""
    use_tcnn: bool = False
    """Use tinycudann's HashGrid when it imports and CUDA is available; else pure PyTorch."""
    density: DensityConfig = field(default_factory=DensityConfig)
    """Density activation and initial blob."""


def hash_grid_paper_config(**overrides) -> HashGridFieldConfig:
    """The SDI paper's threestudio geometry encoding: 16 levels x 2 features, T = 2^19, base 16."""
    base = dict(n_levels=16, log2_hashmap_size=19, use_tcnn=True)
    return HashGridFieldConfig(**{**base, **overrides})


class TcnnFallbackWarning(UserWarning):
    """A hash grid asked for tinycudann (``use_tcnn``) runs on the pure-PyTorch encoding instead."""


_said_tcnn_fallback = False


def _fall_back_from_tcnn(reason: str) -> None:
    """Say once per process, clearly, that ``use_tcnn`` is not honoured and why."""
    global _said_tcnn_fallback
    if not _said_tcnn_fallback:
        _said_tcnn_fallback = True
        warnings.warn(f"hash grid: use_tcnn=True (the sdi-paper / sdi-reference presets) but {reason}; using the "
                      "pure-PyTorch hash encoding instead (same function, several times slower on a GPU). "
                      "Install tinycudann on a CUDA machine for the fused kernels.", TcnnFallbackWarning, stacklevel=3)


def _tcnn_encoding(cfg: HashGridFieldConfig) -> nn.Module | None:
    """tinycudann HashGrid when asked for, importable and on a CUDA machine; else None (said once)."""
    if not cfg.use_tcnn:
        return None
    if not torch.cuda.is_available():
        _fall_back_from_tcnn("this machine has no CUDA device")
        return None
    try:
        import tinycudann as tcnn  # noqa: PLC0415 - optional, never imported at module load
    except ImportError as error:
        _fall_back_from_tcnn(f"tinycudann does not import ({error})")
        return None
    enc_cfg = {
        "otype": "HashGrid",
        "n_levels": cfg.n_levels,
        "n_features_per_level": cfg.n_features_per_level,
        "log2_hashmap_size": cfg.log2_hashmap_size,
        "base_resolution": cfg.base_resolution,
        "per_level_scale": cfg.per_level_scale,
    }
    return tcnn.Encoding(3, enc_cfg)


def mlp(in_dim: int, hidden: int, n_hidden_layers: int, out_dim: int) -> nn.Sequential:
    """Plain ReLU MLP with ``n_hidden_layers`` hidden layers of width ``hidden``."""
    dims = [in_dim] + [hidden] * n_hidden_layers
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class HashGridField(nn.Module):
    """Hash-grid encoding + MLP -> density logit and albedo logits (threestudio ImplicitVolume)."""

    def __init__(self, cfg: HashGridFieldConfig = HashGridFieldConfig()):
        super().__init__()
        self.cfg = cfg
        self.tcnn_encoding = _tcnn_encoding(cfg)
        self.encoding = HashGridEncoding(cfg) if self.tcnn_encoding is None else None
        out_dim = cfg.n_levels * cfg.n_features_per_level
        self.decoder = mlp(out_dim, cfg.hidden_dim, cfg.n_hidden_layers, 4)

    def encode(self, points: Tensor) -> Tensor:
        """(N, 3) world points -> (N, L * F) features; points outside the box are clamped to it."""
        x01 = (points / self.cfg.bound * 0.5 + 0.5).clamp(0.0, 1.0)
        if self.tcnn_encoding is not None:
            return self.tcnn_encoding(x01).float()
        return self.encoding(x01)

    def _logits(self, points: Tensor) -> Tensor:
        return self.decoder(self.encode(points))

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density."""
        return activate_density(self._logits(points)[:, 0], points, self.cfg.density)

    def forward(self, points: Tensor) -> FieldOutput:
        """(N, 3) -> FieldOutput with density (N,) and albedo (N, 3)."""
        logits = self._logits(points)
        density = activate_density(logits[:, 0], points, self.cfg.density)
        return FieldOutput(density=density, albedo=torch.sigmoid(logits[:, 1:]))


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolidBackgroundConfig:
    """A single background colour."""

    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1]; white by default."""
    learnable: bool = False
    """Optimise the colour (through a sigmoid) instead of keeping it fixed."""


class SolidBackground(nn.Module):
    """Same colour for every direction: (..., 3) directions -> (..., 3) rgb."""

    def __init__(self, cfg: SolidBackgroundConfig = SolidBackgroundConfig()):
        super().__init__()
        self.cfg = cfg
        color = torch.tensor(cfg.color, dtype=torch.float32)
        if cfg.learnable:
            self.logit = nn.Parameter(torch.logit(color.clamp(1e-3, 1 - 1e-3)))
        else:
            self.register_buffer("color", color)

    def forward(self, directions: Tensor) -> Tensor:
        """(..., 3) -> (..., 3) rgb."""
        color = torch.sigmoid(self.logit) if self.cfg.learnable else self.color
        return color.to(directions).expand(directions.shape)


@dataclass(frozen=True)
class DirectionBackgroundConfig:
    """Neural environment map: frequency-encoded view direction -> MLP -> sigmoid rgb."""

    n_frequencies: int = 2
    """Sin/cos frequency bands of the direction (threestudio: 2)."""
    hidden_dim: int = 16
    """Width of the MLP (threestudio: 16)."""
    n_hidden_layers: int = 2
    """Hidden layers of the MLP (threestudio: 2)."""


class DirectionBackground(nn.Module):
    """Learnable rgb as a function of the ray direction only (threestudio's
    neural-environment-map-background): (..., 3) directions -> (..., 3) rgb in [0, 1]."""

    def __init__(self, cfg: DirectionBackgroundConfig = DirectionBackgroundConfig()):
        super().__init__()
        self.cfg = cfg
        in_dim = 3 + 6 * cfg.n_frequencies
        self.mlp = mlp(in_dim, cfg.hidden_dim, cfg.n_hidden_layers, 3)

    def encode(self, d: Tensor) -> Tensor:
        """(M, 3) unit directions -> (M, 3 + 6 K) [d, sin(2^k pi d), cos(2^k pi d)]."""
        freqs = (2.0 ** torch.arange(self.cfg.n_frequencies, device=d.device, dtype=d.dtype)) * math.pi
        ang = (d[:, None, :] * freqs[:, None]).flatten(1)
        return torch.cat([d, ang.sin(), ang.cos()], dim=-1)

    def forward(self, directions: Tensor) -> Tensor:
        """(..., 3) -> (..., 3) rgb."""
        d = F.normalize(directions.reshape(-1, 3), dim=-1)
        return torch.sigmoid(self.mlp(self.encode(d))).view(directions.shape)
