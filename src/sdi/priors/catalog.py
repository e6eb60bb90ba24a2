"""The embedded prior: exact at every camera, with sharp modes to average.

For a catalog prompt and a query camera, the exemplars are the prompt's ``variants`` (``sdi.scene.variants``)
rendered by the ground-truth renderer at that very camera, so E[x0 | x_t, prompt, camera] is the closed-form
posterior mean of the variants, each widened by Gaussian noise of std ``SMOOTHING`` (a kernel density estimate):
exact everywhere for that distribution, with no blend of neighbouring views. At high noise the posterior spreads
over the variants (distinct, sharp modes: their mean is a blur); at low noise it settles on the nearest one
(``smoothing=0``: onto its render exactly). The unconditional branch ("") adds fixed other catalog objects
(``distractors``) of the same shape, in other colours and patterns, rendered at the same camera: one sphere trace
per camera serves every exemplar (a distractor of another shape would cost a trace of its own, ~20-50 ms per camera
pair on 2 cores).

The renders depend only on the camera (and on the colour behind the object, ``Cameras.background``, when training
composites its renders over random colours): they are made once per batch of cameras and kept for the next call
with the same cameras, so every denoiser call of a training step (the inversion included) reuses them. A negative
timestep label (the authors' -99 of the clean image) reads a(0).

``joint_views``: a multi-view prior (as MVDream is to Stable Diffusion). The batch of cameras is one sample of
the object seen from each of them: one posterior over the variants for the whole batch, from the sum of the
views' log-likelihoods, so every view of a step is pulled toward the same variant. Each view alone has the same
distribution as without it (one camera: identical); the default (False) treats each camera as its own sample.
``fast`` and every CPU preset turn it on (``Preset.joint_views``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch
from sdi.diffusion.schedules import sd_alphas_cumprod
from sdi.priors.exemplar import PosteriorMeanDenoiser, UnknownPrompt, exemplar_posterior_mean
from sdi.scene.cameras import Cameras
from sdi.scene.catalog import CatalogObject, catalog_objects, parse_prompt
from sdi.scene.ground_truth import over_background, render_shared_geometry
from sdi.scene.variants import N_VARIANTS, catalog_variants

DISTRACTOR_SEED = 1
"""Seed of the catalog shuffle the distractors are taken from."""
N_DISTRACTORS = 7
"""Other objects in the unconditional branch."""
SUPERSAMPLE = 2
"""Exemplars are rendered anti-aliased (2 x 2 rays per pixel), like a learned field's soft edges."""
SMOOTHING = 1.0
"""Noise s0 (in [-1, 1] units) below which the prior has not memorized its variants (``exemplar_posterior_mean``).
With s0 = 0 (the exact posterior of the variants alone) every image off the variants is noise to the prior: DDIM
inversion of a render that is not yet a variant amplifies its residual, and SDI's target moves *away* from the
nearest variant (measured: render 0.071 RMS from variant 3, SDI target 0.266 from it at t = 220-980, while SDS's
target is variant 3 exactly at t = 130-590), so an SDI run settles on the variants' mean, a blur. A learned model
generalizes: s0 > 0 accepts a render near a variant as that variant plus detail it has not seen. PSNR of the main
job to its nearest variant / to the variant mean (the former 48^3 field at s0 = 0: 21.2 / 26.4 dB, the mean); the
``fast`` field, seed 0: s0 = 0.5: 21.7 / 26.2, 0.7: 24.8 / 21.9, 1.0: 29.4 / 19.0 (a mode); seed 1: 21.1 / 25.5,
22.3 / 24.1, 23.5 / 22.4; s0 = 2.0, seed 1: 23.0 / 22.3 (README, "The embedded prior")."""


def distractors(target: CatalogObject, n: int = N_DISTRACTORS) -> list[CatalogObject]:
    """``n`` fixed catalog objects of ``target``'s shape in other colours (so none is one of its variants)."""
    pool = [o for o in catalog_objects(seed=DISTRACTOR_SEED) if o.shape == target.shape and o.color != target.color]
    return pool[:n]


class CatalogPrior(PosteriorMeanDenoiser):
    """Closed-form denoiser of a catalog prompt's variants seen from the query cameras (pixel space, [-1, 1])."""

    def __init__(self, prompt: str, n_variants: int = N_VARIANTS, n_distractors: int = N_DISTRACTORS,
                 alphas_cumprod: Tensor | None = None, supersample: int = SUPERSAMPLE, smoothing: float = SMOOTHING,
                 joint_views: bool = False):
        self.target = parse_prompt(prompt)
        self.variants = catalog_variants(self.target, n_variants)
        self.distractors = distractors(self.target, n_distractors)
        self.alphas_cumprod = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.supersample = supersample
        self.smoothing = smoothing
        self.joint_views = joint_views
        self.renders = 0
        """Batches of cameras rendered so far (one per training step)."""
        self._cached: tuple[tuple, Tensor, Tensor] | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.target.prompt]

    def members(self, prompt: str) -> slice:
        """The exemplars a prompt selects: the variants (the target, however spelled), or all ("")."""
        if prompt == "":
            return slice(None)
        try:
            same = parse_prompt(prompt) == self.target
        except ValueError:
            same = False
        if not same:
            raise UnknownPrompt(f"unknown prompt {prompt!r}; this prior knows: {self.target.prompt}")
        return slice(0, len(self.variants))

    def exemplars(self, cameras: CameraBatch, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(B, N, 3 * H * W) float64 renders in [-1, 1] at each camera (the variants, then the distractors), over each
        camera's ``background`` colour (white if None), and their squared norms (B, N); the last batch is kept."""
        if cameras is None:
            raise ValueError("the embedded prior renders its exemplars at the query camera: pass the cameras")
        background = getattr(cameras, "background", None)
        key = tuple(None if v is None else v.detach().cpu().float().clone()
                    for v in (cameras.c2w, cameras.fovy, background)) + (height, width)
        if self._cached is not None and _same_key(self._cached[0], key):
            return self._cached[1], self._cached[2]
        renders = render_shared_geometry([*self.variants, *self.distractors], Cameras(key[0], key[1], height, width),
                                         self.supersample)
        rgb = over_background(torch.stack([r.rgb for r in renders]), renders[0].mask, key[2])  # (N, B, 3, H, W)
        flat = (rgb.transpose(0, 1).double() * 2 - 1).flatten(2)
        self._cached = (key, flat, flat.pow(2).sum(-1))
        self.renders += 1
        return flat, self._cached[2]

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, prompt: str, cameras: CameraBatch) -> Tensor:
        """E[x0 | x_t, prompt, camera] (B, 3, H, W) float64; alpha (B,) the level of each x_t."""
        flat, sq_norms = self.exemplars(cameras, *x_t.shape[-2:])
        pick = self.members(prompt)
        mean = exemplar_posterior_mean(x_t.detach().cpu().double().flatten(1), alpha, flat[:, pick], sq_norms[:, pick],
                                       smoothing=self.smoothing, joint=self.joint_views)
        return mean.reshape(x_t.shape).to(x_t.device)


def _same_key(a: tuple, b: tuple) -> bool:
    """Whether two (c2w, fovy, background, H, W) keys name the same cameras, backgrounds and size."""
    def same(x, y):
        return x is y is None or (x is not None and y is not None and x.shape == y.shape and torch.equal(x, y))
    return a[3:] == b[3:] and all(same(x, y) for x, y in zip(a[:3], b[:3]))


def build_catalog_prior(prompt: str, alphas_cumprod: Tensor | None = None, joint_views: bool = False) -> CatalogPrior:
    """The embedded prior of a catalog ``prompt`` (a one-line error for words outside the catalog)."""
    return CatalogPrior(prompt, alphas_cumprod=alphas_cumprod, joint_views=joint_views)
