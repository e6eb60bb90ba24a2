"""A small built-in image set, generated procedurally and deterministically (no download).

Five labeled classes of two-colour patterns with sharp edges, thin lines and small dots, the kind of
fine detail that over-smoothing distillation rules (SDS) wash out and SDI should keep. Each class is
a low-dimensional continuous family: one pattern at a fixed frequency, shifted by a random phase
(or centre), in one of two palettes. Dense families matter: with scattered variants the exemplar
posterior collapses onto one image at every noise level and no rule can blur anything. Each variant
draws from a generator seeded by (class, variant), so the first ``k`` variants of a class do not
depend on ``per_class``. Images are (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

BUILTIN_LABELS: tuple[str, ...] = ("stripes", "checker", "rings", "dots", "bricks")
DEFAULT_LABEL: str = "checker"

# A pattern maps pixel-centre coordinates u, v in [0, 1) (H, W) and a generator to a {0, 1} mask.
Pattern = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _rotate(u: Tensor, v: Tensor, angle: float) -> tuple[Tensor, Tensor]:
    """Coordinates rotated by ``angle`` about the image centre."""
    c, s = math.cos(angle), math.sin(angle)
    du, dv = u - 0.5, v - 0.5
    return c * du - s * dv, s * du + c * dv


def _stripes(u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """Thin parallel lines: 4-9 periods per image, duty 25-40 %, any orientation."""
    freq, duty, phase = 6.0, 0.3, _uniform(g, 0, 1)
    a, _ = _rotate(u, v, _uniform(g, 0.3, 0.5))
    return (torch.frac(freq * a + phase + 8) < duty).float()


def _checker(u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """A rotated checkerboard of 3-8 squares per side."""
    freq, phase_a, phase_b = 5.0, _uniform(g, 0, 1), _uniform(g, 0, 1)
    a, b = _rotate(u, v, 0.2)
    return torch.remainder(torch.floor(freq * a + phase_a) + torch.floor(freq * b + phase_b), 2)


def _rings(u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """Thin concentric rings around an off-centre point."""
    cu, cv = _uniform(g, 0.4, 0.6), _uniform(g, 0.4, 0.6)
    freq, duty, phase = 6.0, 0.3, _uniform(g, 0, 1)
    r = ((u - cu) ** 2 + (v - cv) ** 2).sqrt()
    return (torch.frac(freq * r + phase) < duty).float()


def _dots(u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """Small disks on a rotated square lattice, every other row shifted by half a cell."""
    freq, radius = 6.0, 0.25
    a, b = _rotate(u, v, 0.3)
    a, b = a + _uniform(g, 0, 1) / freq, b + _uniform(g, 0, 1) / freq
    row = torch.floor(freq * b)
    du = torch.frac(freq * a + 0.5 * torch.remainder(row, 2) + 8) - 0.5
    dv = torch.frac(freq * b + 8) - 0.5
    return (du**2 + dv**2 < radius**2).float()


def _bricks(u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """A running-bond brick wall: thin mortar lines (the mask) between bricks twice as wide as tall."""
    rows, mortar = 5.0, 0.2
    a, b = u, v
    y = rows * b + _uniform(g, 0, 1)
    x = rows * a / 2 + 0.5 * torch.remainder(torch.floor(y), 2) + _uniform(g, 0, 1)
    near = lambda z, w: (torch.frac(z) < w) | (torch.frac(z) > 1 - w)  # noqa: E731
    return (near(y, mortar / 2) | near(x, mortar / 4)).float()


_PATTERNS: dict[str, Pattern] = {
    "stripes": _stripes,
    "checker": _checker,
    "rings": _rings,
    "dots": _dots,
    "bricks": _bricks,
}


_PALETTES: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.9, -0.8, -0.8), (0.9, 0.9, 0.9)),  # red on white
    ((-0.8, -0.6, 0.9), (0.9, 0.8, -0.7)),  # blue on yellow
)


def _colours(variant: int) -> tuple[Tensor, Tensor]:
    """Foreground and background of a variant: two palettes alternate, so that a class is a continuous
    family (its variants differ in phase, frequency and orientation) rather than scattered colours."""
    fg, bg = _PALETTES[variant % len(_PALETTES)]
    return torch.tensor(fg, dtype=torch.float64), torch.tensor(bg, dtype=torch.float64)


def pattern_image(label: str, variant: int, size: int = 64, supersample: int | None = None) -> Tensor:
    """Variant ``variant`` of class ``label``: a (3, size, size) float32 image in [-1, 1], rendered at
    ``supersample`` x the size (default: at least 128 px) and box-filtered, so thin lines survive at 32."""
    supersample = supersample or max(1, -(-128 // size))
    if label not in _PATTERNS:
        raise ValueError(f"unknown built-in class {label!r}; choose one of {', '.join(BUILTIN_LABELS)}")
    g = torch.Generator().manual_seed(1000 * BUILTIN_LABELS.index(label) + variant)
    fg, bg = _colours(variant)
    fine = size * supersample
    centres = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v down the rows, u along them
    mask = torch.nn.functional.avg_pool2d(_PATTERNS[label](u, v, g)[None, None], supersample)[0]
    image = bg[:, None, None] + (fg - bg)[:, None, None] * mask
    return image.clamp(-1, 1).float()


def builtin_images(size: int = 64, per_class: int = 64) -> tuple[Tensor, list[str]]:
    """All classes, ``per_class`` variants each: images (len(BUILTIN_LABELS) * per_class, 3, size, size)
    float32 in [-1, 1] and their labels, grouped by class in BUILTIN_LABELS order."""
    if size < 8:
        raise ValueError(f"built-in images need size >= 8, got {size}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = [label for label in BUILTIN_LABELS for _ in range(per_class)]
    images = [pattern_image(label, k, size) for label in BUILTIN_LABELS for k in range(per_class)]
    return torch.stack(images), labels
