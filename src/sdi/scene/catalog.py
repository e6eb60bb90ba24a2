"""A procedural catalog of textured objects with exact ground truth.

Every object is a shape (a signed distance function), a body color and a pattern painted in object
space in a second color: "a red cube with white stripes". All shapes lie within radius 0.48 of the
origin, so cameras at distance >= 1.5 with fovy >= 40 deg see them whole (asin(0.48 / 1.5) < 20 deg).
Pattern frequencies are chosen to stay visible at 64x64 (about 39 pixels per unit at distance 1.75, fovy 50).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

BOUNDING_RADIUS = 0.48
"""Every catalog shape lies inside this sphere around the origin."""

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.55, 0.20, 0.70),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
}


# ---------------------------------------------------------------- shapes: sdf(points (N, 3)) -> (N,)


def _max_columns(q: Tensor) -> Tensor:
    """Row-wise max (N,) of q (N, k) as elementwise maxima: a reduction over dim -1 runs
    multi-threaded even on small tensors, which stalls a busy CPU inside the tracing loop."""
    out = q[:, 0]
    for j in range(1, q.shape[1]):
        out = torch.maximum(out, q[:, j])
    return out


def _box(p: Tensor, half: float = 0.27, rounding: float = 0.02) -> Tensor:
    """Cube of half-extent ``half`` with slightly rounded edges."""
    q = p.abs() - (half - rounding)
    return q.clamp(min=0).norm(dim=-1) + _max_columns(q).clamp(max=0) - rounding


def _sphere(p: Tensor, radius: float = 0.45) -> Tensor:
    return p.norm(dim=-1) - radius


def _cylinder(p: Tensor, radius: float = 0.28, half_height: float = 0.38) -> Tensor:
    """Vertical cylinder (axis y); its rims are 0.472 from the origin."""
    q_rho, q_y = torch.hypot(p[:, 0], p[:, 2]) - radius, p[:, 1].abs() - half_height
    return torch.hypot(q_rho.clamp(min=0), q_y.clamp(min=0)) + torch.maximum(q_rho, q_y).clamp(max=0)


def _segment_distance(q: Tensor, a: tuple[float, float], b: tuple[float, float]) -> Tensor:
    """Distance from 2D points q (N, 2) to the segment a-b."""
    (ax, ay), (bx, by) = a, b
    ex, ey = bx - ax, by - ay
    px, py = q[:, 0] - ax, q[:, 1] - ay
    h = ((px * ex + py * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    return torch.hypot(px - h * ex, py - h * ey)


def _cone(p: Tensor, radius: float = 0.35, bottom: float = -0.3, apex: float = 0.45) -> Tensor:
    """Upright cone: exact distance to its (rho, y) cross-section triangle, the axis edge excluded."""
    q = torch.stack([torch.hypot(p[:, 0], p[:, 2]), p[:, 1]], dim=-1)
    base, rim, top = (0.0, bottom), (radius, bottom), (0.0, apex)
    distance = torch.minimum(_segment_distance(q, base, rim), _segment_distance(q, rim, top))
    # inside: above the base and on the axis side of the slanted edge
    slant = (top[0] - rim[0]) * (q[:, 1] - rim[1]) - (top[1] - rim[1]) * (q[:, 0] - rim[0])
    inside = (q[:, 1] > bottom) & (slant > 0)
    return torch.where(inside, -distance, distance)


def _torus(p: Tensor, major: float = 0.33, minor: float = 0.14) -> Tensor:
    """Upright ring facing the front camera (axis z): a hole from the front, a bar from the side."""
    q = torch.stack([torch.hypot(p[:, 0], p[:, 1]) - major, p[:, 2]], dim=-1)
    return q.norm(dim=-1) - minor


def _capsule(p: Tensor, half_length: float = 0.22, radius: float = 0.25) -> Tensor:
    """Vertical capsule: segment from y = -half_length to +half_length, thickened by ``radius``."""
    axis = torch.zeros_like(p)
    axis[:, 1] = p[:, 1].clamp(-half_length, half_length)
    return (p - axis).norm(dim=-1) - radius


def _pyramid(p: Tensor, half: float = 0.27, bottom: float = -0.27, apex: float = 0.45) -> Tensor:
    """Square pyramid as the max of its five face planes: exact inside, a lower bound outside,
    which is all sphere tracing needs; its gradient on the surface is the face normal."""
    height = apex - bottom
    norm = (height**2 + half**2) ** 0.5
    # side faces: (height * |x| + half * (y - apex)) / norm, same for z
    sides = [(height * p[:, i].abs() + half * (p[:, 1] - apex)) / norm for i in (0, 2)]
    return torch.maximum(bottom - p[:, 1], torch.maximum(*sides))


SHAPES: dict[str, Callable[[Tensor], Tensor]] = {
    "cube": _box,
    "sphere": _sphere,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "pyramid": _pyramid,
}


# ------------------------------------------------------ patterns: mask(points (N, 3)) -> (N,) bool


def _plain(p: Tensor) -> Tensor:
    return torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)


def _stripes(p: Tensor, period: float = 0.2) -> Tensor:
    """Horizontal bands (along y), half a period wide, centred at y = +-period / 2."""
    return torch.remainder(torch.floor(p[:, 1] / (period / 2) + 0.5), 2) == 1


def _checker(p: Tensor, cell: float = 0.135) -> Tensor:
    """3D checkerboard of cubic cells; cube faces (x = +-0.27) lie mid-cell, so each shows a clean 2D checker."""
    return torch.remainder(torch.floor(p / cell + 0.5).sum(dim=-1), 2) == 1


def _dots(p: Tensor, spacing: float = 0.135, radius: float = 0.05) -> Tensor:
    """Balls on a body-centred cubic lattice, so curved surfaces and flat faces both show dots."""
    corner = p - spacing * torch.round(p / spacing)
    centre = p - spacing * (torch.floor(p / spacing) + 0.5)
    return torch.minimum(corner.norm(dim=-1), centre.norm(dim=-1)) < radius


PATTERNS: dict[str, Callable[[Tensor], Tensor]] = {
    "plain": _plain,
    "stripes": _stripes,
    "checker": _checker,
    "dots": _dots,
}

_PATTERN_WORDS = {
    "plain": "plain", "solid": "plain",
    "stripes": "stripes", "stripe": "stripes", "striped": "stripes", "stripy": "stripes",
    "checker": "checker", "checkers": "checker", "checkered": "checker", "checkerboard": "checker",
    "checked": "checker", "chequered": "checker", "checks": "checker",
    "dots": "dots", "dot": "dots", "dotted": "dots", "spots": "dots", "spotted": "dots", "spotty": "dots",
}  # fmt: skip
_PATTERN_NOUNS = {"stripes": "stripes", "checker": "checkers", "dots": "dots"}
_FILLERS = {"a", "an", "the", "with", "and", "of", "polka", "pattern", "patterned"}


def default_pattern_color(color: str) -> str:
    """White, or black on a white body."""
    return "black" if color == "white" else "white"


@dataclass(frozen=True)
class CatalogObject:
    """One catalog object; ``pattern_color`` None means the default (white, black on white)."""

    shape: str
    """One of ``SHAPES``."""
    color: str
    """Body color, one of ``COLORS``."""
    pattern: str = "plain"
    """One of ``PATTERNS``."""
    pattern_color: str | None = None
    """Color of the pattern; ignored (normalized to the default) for plain objects."""

    def __post_init__(self):
        for field, known in (("shape", SHAPES), ("color", COLORS), ("pattern", PATTERNS)):
            if getattr(self, field) not in known:
                raise UnknownWord(f"unknown {field} {getattr(self, field)!r}; {_vocabulary_line()}")
        if self.pattern_color is not None and self.pattern_color not in COLORS:
            raise UnknownWord(f"unknown pattern color {self.pattern_color!r}; {_vocabulary_line()}")
        if self.pattern_color is None or self.pattern == "plain":
            object.__setattr__(self, "pattern_color", default_pattern_color(self.color))

    @property
    def prompt(self) -> str:
        """Canonical text: "a red cube with white stripes", or "a red cube" when plain."""
        article = "an" if self.color[0] in "aeiou" else "a"
        text = f"{article} {self.color} {self.shape}"
        if self.pattern != "plain":
            text += f" with {self.pattern_color} {_PATTERN_NOUNS[self.pattern]}"
        return text

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) of points (N, 3), negative inside."""
        return SHAPES[self.shape](points)

    def albedo(self, points: Tensor) -> Tensor:
        """Surface color (N, 3) in [0, 1] at points (N, 3), the pattern painted in object space."""
        body = points.new_tensor(COLORS[self.color])
        paint = points.new_tensor(COLORS[self.pattern_color])
        return torch.where(PATTERNS[self.pattern](points)[:, None], paint, body)


class UnknownWord(ValueError):
    """A prompt word outside the catalog's vocabulary."""


def vocabulary() -> dict[str, list[str]]:
    """The words a prompt may use: shapes, colors, patterns (with their accepted synonyms)."""
    return {
        "shapes": list(SHAPES),
        "colors": list(COLORS),
        "patterns": list(PATTERNS),
        "pattern_words": sorted(_PATTERN_WORDS),
        "fillers": sorted(_FILLERS),
    }


_VOCABULARY_LINE = (("shapes", "shapes"), ("colors", "colors"), ("patterns", "pattern_words"))


def _vocabulary_line() -> str:
    """The vocabulary on one line, for error messages."""
    v = vocabulary()
    return "; ".join(f"{kind}: {', '.join(v[key])}" for kind, key in _VOCABULARY_LINE)


def _shape_word(word: str) -> str | None:
    """The shape a word names, accepting a plural "s"."""
    if word in SHAPES:
        return word
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPES else None


def parse_prompt(text: str) -> CatalogObject:
    """Read "a red cube with white stripes" / "a red striped cube" / "A Blue Sphere" into an object.

    The first color is the body, a second one the pattern's; case, articles, "with", "and" and
    punctuation are ignored. Raises ``UnknownWord`` (listing the vocabulary) or ``ValueError``.
    """
    # Whitespace and ASCII punctuation (but the apostrophe) separate words; anything else, an emoji or an accented
    # letter, stays in its word, which is then unknown: nothing of the prompt is dropped unseen.
    words = [w for w in re.split(r"[\s" + re.escape(string.punctuation.replace("'", "")) + "]+", text.lower()) if w]
    if not words:
        raise ValueError(f"empty prompt {text!r}; describe an object like 'a red cube with white stripes'")
    shapes, colors, patterns = [], [], []
    for word in words:
        if word in _FILLERS:
            continue
        if word in COLORS:
            colors.append(word)
        elif word in _PATTERN_WORDS:
            patterns.append(_PATTERN_WORDS[word])
        elif _shape_word(word):
            shapes.append(_shape_word(word))
        else:
            raise UnknownWord(f"unknown word {word!r} in prompt {text!r}; {_vocabulary_line()}")
    if len(shapes) != 1:
        raise ValueError(f"prompt {text!r} must name exactly one shape ({', '.join(SHAPES)})")
    if not 1 <= len(colors) <= 2:
        raise ValueError(f"prompt {text!r} must name a body color and at most one pattern color ({', '.join(COLORS)})")
    if len(set(patterns)) > 1:
        raise ValueError(f"prompt {text!r} names more than one pattern: {', '.join(patterns)}")
    pattern = patterns[0] if patterns else "plain"
    if len(colors) == 2 and pattern == "plain":
        raise ValueError(f"prompt {text!r} gives a second color but no pattern (stripes, checkers, dots)")
    return CatalogObject(shapes[0], colors[0], pattern, colors[1] if len(colors) == 2 else None)


def all_catalog_objects() -> list[CatalogObject]:
    """Every distinct object in a fixed order: plain ones, then each pattern in every other color."""
    objects = []
    for shape in SHAPES:
        for color in COLORS:
            objects.append(CatalogObject(shape, color))
            for pattern in list(PATTERNS)[1:]:
                objects += [CatalogObject(shape, color, pattern, c) for c in COLORS if c != color]
    return objects


def catalog_objects(seed: int = 0, n: int | None = None) -> list[CatalogObject]:
    """A deterministic shuffle (by ``seed``) of every catalog object; the first ``n`` if given."""
    objects = all_catalog_objects()
    order = torch.randperm(len(objects), generator=torch.Generator().manual_seed(seed)).tolist()
    if n is not None and not 0 <= n <= len(objects):
        raise ValueError(f"catalog_objects: n must be in [0, {len(objects)}], got {n}")
    return [objects[i] for i in order[:n]]
