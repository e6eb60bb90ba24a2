"""Load a folder of PNG/JPG images as an exemplar set: (N, 3, size, size) in [-1, 1] plus labels.

An image's label is the name of the folder it sits in: ``cats/a.png`` and ``dogs/b.jpg`` under the
given folder are labeled "cats" and "dogs"; images directly in the folder get the folder's own name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageFolderError(ValueError):
    """A folder that cannot be loaded as an image set."""


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (extension case ignored)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _labeled_files(root: Path) -> list[tuple[Path, str]]:
    """(file, label) for images in ``root`` (label: root's name) and in its non-hidden subfolders."""
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [(f, folder.name) for folder in folders for f in _image_files(folder)]


def _square(image: Image.Image) -> Image.Image:
    """Centre crop to a square, so resizing keeps the aspect of what is shown."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def load_image(path: Path, size: int) -> Tensor:
    """One image as (3, size, size) float32 in [-1, 1]: RGB, centre-cropped, bicubic-resized."""
    try:
        with Image.open(path) as im:
            image = _square(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageFolderError(f"cannot decode image file {path}; fix or remove that file") from None
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image_folder(path: str | Path, size: int = 64) -> tuple[Tensor, list[str]]:
    """Images (N, 3, size, size) float32 in [-1, 1] and one label per image (its folder's name)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} not found; pass an existing folder of PNG/JPG images")
    if size < 1:
        raise ImageFolderError(f"image size must be >= 1, got {size}")
    files = _labeled_files(root.resolve())
    if not files:
        raise ImageFolderError(
            f"no PNG/JPG images in {root} or its subfolders; add some (one subfolder per label)"
        )
    images = torch.stack([load_image(f, size) for f, _ in files])
    return images, [label for _, label in files]
