"""Empty-space skipping for CPU renders: a binary occupancy grid over the field's box, refreshed from its density."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    """Binary occupancy of a res^3 grid over [-bound, bound]^3, updated explicitly from the field's
    density (Instant-NGP / nerfacc): ``grid = max(decay * grid, density(jittered cell centres))``,
    then occupied = (grid > threshold), dilated by one cell so that samples between a dense cell's
    centre and its empty neighbour are kept. ``threshold`` is in density units: with ~50 samples
    over a ray of length ~2.5, sigma = 0.1 is an alpha of ~0.005 per sample.

    Speed-up (``sdi.scene.renderer``'s docstring table): 786k -> 212k evaluated points and 1.5-2.3x faster
    render + backward for the initial blob; an update of the 32^3 grid costs ~5-90 ms."""

    def __init__(
        self,
        resolution: int = 32,
        bound: float = 1.0,
        threshold: float = 0.1,
        decay: float = 0.95,
        update_every: int = 16,
        dilate: bool = True,
    ):
        super().__init__()
        self.resolution = resolution
        self.bound = bound
        self.threshold = threshold
        self.decay = decay
        self.update_every = update_every
        self.dilate = dilate
        self.register_buffer("density_ema", torch.full((resolution,) * 3, float("inf")))
        self.register_buffer("mask", torch.ones((resolution,) * 3, dtype=torch.bool))

    def cell_centres(self, generator: torch.Generator | None = None) -> Tensor:
        """(res^3, 3) world positions of the cells, jittered uniformly inside each cell, on the grid's device
        (``generator`` must be there too)."""
        r, device = self.resolution, self.density_ema.device
        idx = torch.stack(torch.meshgrid(*[torch.arange(r, device=device)] * 3, indexing="ij"), -1).view(-1, 3)
        jitter = torch.rand(idx.shape, generator=generator, device=device)
        return ((idx + jitter) / r * 2 - 1) * self.bound

    @torch.no_grad()
    def update(self, step: int, density_fn, generator: torch.Generator | None = None) -> bool:
        """Refresh the grid from ``density_fn((N, 3)) -> (N,)`` every ``update_every`` steps;
        returns whether it updated. The first call replaces the initial all-occupied state."""
        if step % self.update_every != 0:
            return False
        pts = self.cell_centres(generator)
        new = torch.cat([density_fn(p) for p in pts.split(65536)]).view(self.density_ema.shape)
        old = self.density_ema
        self.density_ema = torch.where(torch.isinf(old), new, torch.maximum(self.decay * old, new))
        occ = (self.density_ema > self.threshold).float()
        if self.dilate:
            occ = F.max_pool3d(occ[None, None], 3, stride=1, padding=1)[0, 0]
        self.mask = occ > 0
        return True

    def occupied(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) bool: inside the box and in an occupied cell."""
        r = self.resolution
        u = (points / self.bound * 0.5 + 0.5) * r
        inside = ((u >= 0) & (u < r)).all(-1)
        idx = u.long().clamp(0, r - 1)
        return inside & self.mask[idx[:, 0], idx[:, 1], idx[:, 2]]
