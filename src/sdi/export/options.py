"""Mesh export options: a light module (no mesh libraries), so the command line can check them first."""

from __future__ import annotations

from dataclasses import dataclass

TEXTURE_SIZE = {"cpu": 512, "cuda": 2048}
"""Default texture side by the device that bakes it (other devices: the CPU's)."""


def default_texture_size(device) -> int:
    """512 on the CPU, 2048 on a CUDA GPU (``device``: a torch.device or its name, 'cuda:1' included)."""
    return TEXTURE_SIZE.get(str(device).split(":")[0], TEXTURE_SIZE["cpu"])


@dataclass(frozen=True)
class MeshOptions:
    """How ``sdi export`` / ``sdi generate`` mesh a field."""

    resolution: int = 128
    """Marching-cubes grid per side."""
    texture_size: int | None = None
    """Side of the baked albedo texture; None: by device (``default_texture_size``)."""
    max_faces: int = 10_000
    """Face budget of the textured mesh (GLB, OBJ); 0 keeps every marching-cubes face (slow to unwrap: see
    ``sdi.export.mesh``). PLY always has the full mesh."""

    def __post_init__(self):
        if self.texture_size is not None and not 16 <= self.texture_size <= 8192:
            raise ValueError(f"--texture-size must be between 16 and 8192, got {self.texture_size}")
        if self.max_faces != 0 and self.max_faces < 4:
            raise ValueError(f"--faces must be at least 4 (or 0: no decimation), got {self.max_faces}")
