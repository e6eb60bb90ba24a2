"""Figures people look at: upscaled image rows with labels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from sdi.io import image_grid


def upscale(images: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour upscaling of (N, C, H, W), so 64 px images stay crisp when viewed."""
    return images.repeat_interleave(scale, -1).repeat_interleave(scale, -2) if scale > 1 else images


def figure(images: Tensor, nrow: int, scale: int = 1, labels: list[str] | None = None) -> np.ndarray:
    """Grid of (N, 3, H, W) images in [0, 1] as uint8, with a caption above each column of the first row."""
    grid = image_grid(upscale(images, scale), nrow=nrow, pad=2)
    if not labels:
        return grid
    cell = grid.shape[1] // nrow
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14), "white")
    canvas.paste(Image.fromarray(grid), (0, 14))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((i * cell + 2, 1), label, fill="black")
    return np.asarray(canvas)
