"""The embedded multi-view prior: an ``ExemplarPrior`` over ground-truth renders of the catalog.

The target object is rendered on a fixed grid of views (``ExemplarGrid``) and labelled with its
canonical prompt; ~15 deterministic distractor objects, rendered on the same grid, join it in the
unconditional ("") branch. The camera conditions the prior through the exemplars' view directions:

- ``"kernel"``: a von Mises-Fisher kernel, log pi_i = kappa * cos(view, view_i) (``ExemplarPrior``);
- ``"bins"``: hard filtering, pi_i = 1 when exemplar i falls in the query's coarse view bin
  (front / side / back / overhead, ``view_bin``) and 0 otherwise; a query whose bin holds no
  exemplar of the prompt (e.g. overhead, above the grid) falls back to all of them.

Renders are cached on disk as safetensors (images, views; labels in the metadata), keyed by a
hash of everything that determines them, written atomically; a corrupt file is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sdi.priors.exemplar import ExemplarPrior
from sdi.scene.cameras import Cameras, orbit_cameras, view_bin
from sdi.scene.catalog import CATALOG_VERSION, CatalogObject, catalog_objects, parse_prompt
from sdi.scene.ground_truth import render_ground_truth

ViewConditioning = Literal["kernel", "bins"]
DISTRACTOR_SEED = 1
"""Seed of the catalog shuffle the distractors are taken from."""
RENDER_VERSION = "1"
"""Bump when the ground-truth renderer's output changes; it keys the cache."""
SUPERSAMPLE = 2
"""Exemplars are rendered anti-aliased (2 x 2 rays per pixel), like a learned field's soft edges."""


@dataclass(frozen=True)
class ExemplarGrid:
    """The fixed views every exemplar object is rendered from."""

    azimuths_deg: tuple[float, ...] = tuple(30.0 * k for k in range(12))
    """Azimuths in degrees (0 = front, +z)."""
    elevations_deg: tuple[float, ...] = (0.0, 20.0, 40.0)
    """Elevations in degrees."""
    distance: float = 1.75
    """Camera distance from the origin."""
    fovy_deg: float = 50.0
    """Vertical field of view in degrees."""

    def cameras(self, size: int) -> Cameras:
        """All len(elevations) x len(azimuths) views, elevation-major."""
        elevation = torch.tensor(self.elevations_deg, dtype=torch.float32).repeat_interleave(len(self.azimuths_deg))
        azimuth = torch.tensor(self.azimuths_deg, dtype=torch.float32).repeat(len(self.elevations_deg))
        return orbit_cameras(elevation, azimuth, self.distance, self.fovy_deg, size)

    def sample(self, batch: int, size: int, generator: torch.Generator) -> Cameras:
        """``batch`` views drawn uniformly from the grid: where the exemplar prior is exact. Between
        grid views its targets are neighbouring views, and their average is a blur."""
        n_az, n_el = len(self.azimuths_deg), len(self.elevations_deg)
        pick = torch.randint(n_az * n_el, (batch,), generator=generator)
        elevation = torch.tensor(self.elevations_deg, dtype=torch.float32)[pick // n_az]
        azimuth = torch.tensor(self.azimuths_deg, dtype=torch.float32)[pick % n_az]
        return orbit_cameras(elevation, azimuth, self.distance, self.fovy_deg, size)


class MultiViewPrior(ExemplarPrior):
    """An ``ExemplarPrior`` that accepts any spelling of a catalog prompt and can condition on view bins."""

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[str],
        alphas_cumprod: Tensor | None = None,
        views: Tensor | None = None,
        view_concentration: float = 0.0,
        view_conditioning: ViewConditioning = "kernel",
    ):
        if view_conditioning not in ("kernel", "bins"):
            raise ValueError(f"view_conditioning must be 'kernel' or 'bins', got {view_conditioning!r}")
        super().__init__(images, labels, alphas_cumprod, views, view_concentration)
        self.view_conditioning = view_conditioning
        self._bins = None if self.views is None else _bin_ids(self.views)

    def members(self, prompt: str) -> Tensor:
        """Indices of the exemplars of ``prompt``, read as a catalog prompt ("A Red Cube" = "a red cube")."""
        if prompt != "":
            try:
                prompt = parse_prompt(prompt).prompt
            except ValueError:  # not a catalog prompt: let ExemplarPrior report it against its labels
                pass
        return super().members(prompt)

    def log_prior(self, idx: Tensor, cameras) -> Tensor:
        """log pi_i (B, n): the vMF kernel, or 0 / -inf by view bin (a bin with no exemplar: all 0)."""
        if self.view_conditioning == "kernel" or cameras is None or self._bins is None:
            return super().log_prior(idx, cameras)
        same = _bin_ids(cameras.view_directions())[:, None] == self._bins[idx][None, :]
        keep = same | ~same.any(dim=1, keepdim=True)
        return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -torch.inf)


_BINS = ("front", "side", "back", "overhead")


def _bin_ids(directions: Tensor) -> Tensor:
    """(B,) index into ``_BINS`` of each direction's ``view_bin``."""
    return torch.tensor([_BINS.index(name) for name in view_bin(directions)])


def default_cache_dir() -> Path:
    """$SDI_CACHE, else ~/.cache/sdi."""
    return Path(os.environ.get("SDI_CACHE") or Path.home() / ".cache" / "sdi")


def exemplar_objects(target: CatalogObject, n_distractors: int = 15) -> list[CatalogObject]:
    """The target followed by ``n_distractors`` fixed catalog objects other than it."""
    pool = [o for o in catalog_objects(seed=DISTRACTOR_SEED, n=n_distractors + 1) if o != target]
    return [target, *pool[:n_distractors]]


def cache_key(objects: Sequence[CatalogObject], size: int, grid: ExemplarGrid) -> str:
    """Hash of everything the exemplar renders depend on."""
    payload = {
        "prompts": [o.prompt for o in objects],
        "size": size,
        "grid": asdict(grid),
        "catalog": CATALOG_VERSION,
        "render": RENDER_VERSION,
        "supersample": SUPERSAMPLE,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def render_exemplars(
    objects: Sequence[CatalogObject], size: int, grid: ExemplarGrid
) -> tuple[Tensor, Tensor, list[str]]:
    """Images (N, 3, size, size) in [-1, 1], views (N, 3) and labels (canonical prompts), object x grid view."""
    cameras = grid.cameras(size)
    images = [render_ground_truth(o, cameras, SUPERSAMPLE).rgb * 2 - 1 for o in objects]
    views = cameras.view_directions().repeat(len(objects), 1)
    labels = [o.prompt for o in objects for _ in range(len(cameras))]
    return torch.cat(images), views, labels


def _save_atomic(path: Path, images: Tensor, views: Tensor, labels: list[str]) -> None:
    """Write the cache file via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        tensors = {"images": images.float().contiguous(), "views": views.float().contiguous()}
        save_file(tensors, tmp, metadata={"labels": json.dumps(labels)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: Path) -> tuple[Tensor, Tensor, list[str]]:
    """Read a cache file (safetensors only); raises on any damage."""
    with safe_open(str(path), framework="pt") as f:
        labels = json.loads(f.metadata()["labels"])
        images, views = f.get_tensor("images"), f.get_tensor("views")
    if images.ndim != 4 or len(images) != len(views) or len(labels) != len(images):
        raise ValueError("inconsistent tensors")
    return images, views, labels


def multiview_cache_path(
    prompt: str,
    size: int = 64,
    cache_dir: Path | None = None,
    grid: ExemplarGrid = ExemplarGrid(),
    n_distractors: int = 15,
) -> Path:
    """Where ``build_multiview_prior`` caches the renders for these arguments."""
    objects = exemplar_objects(parse_prompt(prompt), n_distractors)
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return folder / f"multiview-{cache_key(objects, size, grid)}.safetensors"


def build_multiview_prior(
    prompt: str,
    size: int = 64,
    cache_dir: Path | None = None,
    grid: ExemplarGrid = ExemplarGrid(),
    n_distractors: int = 15,
    view_conditioning: ViewConditioning = "kernel",
    view_concentration: float = 20.0,
    alphas_cumprod: Tensor | None = None,
) -> MultiViewPrior:
    """The multi-view exemplar prior for a catalog ``prompt``, rendered once and cached on disk.

    ``view_concentration`` kappa of the vMF kernel (20 ~ 13 deg angular width, under the grid's
    30 deg spacing); unused with ``view_conditioning="bins"``.
    """
    path = multiview_cache_path(prompt, size, cache_dir, grid, n_distractors)
    loaded = None
    if path.exists():
        try:
            loaded = _load(path)
        except Exception as error:  # any damage: rebuild, never crash
            warnings.warn(f"multiview prior cache {path} is unreadable ({error}); rebuilding it", stacklevel=2)
    if loaded is None:
        loaded = render_exemplars(exemplar_objects(parse_prompt(prompt), n_distractors), size, grid)
        try:
            _save_atomic(path, *loaded)
        except OSError as error:  # a read-only or full disk costs a rebuild next time, nothing more
            warnings.warn(f"could not write the multiview prior cache {path} ({error})", stacklevel=2)
    images, views, labels = loaded
    return MultiViewPrior(
        images.float(),
        labels,
        alphas_cumprod=alphas_cumprod,
        views=views.float(),
        view_concentration=view_concentration,
        view_conditioning=view_conditioning,
    )
