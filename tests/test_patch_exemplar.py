"""The patch exemplar prior against a brute-force posterior over every quilt; it reduces to the exemplar
prior at full patch size; DDIM with it lands on a quilt of exemplar tiles."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sdi.data.builtin import builtin_images
from sdi.diffusion.ddim import ddim_sample
from sdi.diffusion.guidance import eps_fn_for
from sdi.diffusion.parametrization import add_noise
from sdi.diffusion.schedules import sampling_grid
from sdi.diffusion.denoiser import Denoiser
from sdi.priors.exemplar import ExemplarPrior, UnknownPrompt
from sdi.priors.patch_exemplar import PatchExemplarPrior
from sdi.scene.cameras import cameras_along

LABELS = ["a", "b", "a", "b", "a"]


def _tiny_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Five (2, 2, 4) images (two 2x2 tiles each) in [-1, 1] and a view direction for each."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 2, 2, 4, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(5, 3, generator=g)


def quilts(images: torch.Tensor, members: list[int]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Every image whose left tile comes from one member and right tile from another, with its sources."""
    return [(torch.cat([images[i][..., :2], images[j][..., 2:]], -1), (i, j))
            for i, j in itertools.product(members, repeat=2)]


def brute_force_mean(images, labels, x, a, prompt, log_pi):
    """E[x0 | x_t] over the explicit list of quilts: label c with probability ~ Z_c = sum pi_n over c, then
    each tile's source i with probability pi_i / Z_c; likelihood N(x_t; sqrt(a) Q, (1 - a) I)."""
    log_w, samples = [], []
    for label in sorted(set(labels)):
        if prompt and label != prompt:
            continue
        members = [n for n, l in enumerate(labels) if l == label]
        log_z = torch.logsumexp(log_pi[members], 0)
        for quilt, (i, j) in quilts(images, members):
            sq = float(((x - math.sqrt(a) * quilt) ** 2).sum())
            log_w.append(-sq / (2 * (1 - a)) + log_z + (log_pi[i] - log_z) + (log_pi[j] - log_z))
            samples.append(quilt)
    w = torch.softmax(torch.tensor(log_w, dtype=torch.float64), 0)
    return sum(wi * s for wi, s in zip(w, samples))


@pytest.mark.parametrize("t", [100, 500, 900])
@pytest.mark.parametrize("with_views", [False, True])
def test_posterior_mean_is_the_brute_force_mean_over_quilts(t, with_views):
    images, views = _tiny_set()
    kernel = {"views": views, "view_concentration": 3.0} if with_views else {}
    prior = PatchExemplarPrior(images, LABELS, patch=2, **kernel)
    a = prior.alphas_cumprod[t].double()
    x_t = add_noise(images[[0, 3]], torch.randn(2, 2, 2, 4, generator=torch.Generator().manual_seed(1),
                                                dtype=torch.float64), a)
    directions = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    cameras = cameras_along(directions) if with_views else None
    for prompt in ("a", "b", ""):
        got = prior.posterior_mean(x_t, a.expand(2), prompt, cameras)
        for b in range(2):
            log_pi = prior.log_prior(torch.arange(5), cameras_along(directions[b:b + 1]) if with_views else None)[0]
            log_pi = log_pi.expand(5)
            expected = brute_force_mean(images, LABELS, x_t[b], float(a), prompt, log_pi)
            torch.testing.assert_close(got[b], expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("with_views", [False, True])
def test_full_size_patch_is_the_exemplar_prior(with_views):
    images, labels = builtin_images(size=16, per_class=3)
    views = torch.randn(len(images), 3, generator=torch.Generator().manual_seed(0))
    kernel = {"views": views, "view_concentration": 2.0} if with_views else {}
    whole, quilted = ExemplarPrior(images, labels, **kernel), PatchExemplarPrior(images, labels, 16, **kernel)
    x_t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ts, query_views = torch.full((3,), 700), cameras_along(views[:3]) if with_views else None
    prompts = ["", "rings", "dots"]
    torch.testing.assert_close(quilted.predict_eps(x_t, ts, prompts, query_views),
                               whole.predict_eps(x_t, ts, prompts, query_views), atol=1e-6, rtol=1e-6)


def test_ddim_sample_is_a_quilt_of_the_labels_tiles_and_differs_from_every_exemplar():
    images, labels = builtin_images(size=16, per_class=8)
    prior = PatchExemplarPrior(images, labels, patch=4)
    assert isinstance(prior, Denoiser)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample = ddim_sample(eps_fn_for(prior, "checker", 1.0), x_T, sampling_grid(prior.alphas_cumprod, 50, final_alpha=1.0))
    torch.testing.assert_close(sample, prior.project(sample, "checker"), atol=1e-3, rtol=0)
    members = images[prior.members("checker")].double()
    assert float((sample[:, None] - members[None]).abs().flatten(2).amax(-1).min()) > 0.1  # a new image


def test_project_picks_the_nearest_tile_and_checks_arguments():
    images, _ = _tiny_set()
    prior = PatchExemplarPrior(images, LABELS, patch=2)
    target = torch.cat([images[2][..., :2], images[0][..., 2:]], -1)[None]
    torch.testing.assert_close(prior.project(target + 0.01, "a"), target)
    torch.testing.assert_close(ExemplarPrior(images, LABELS).project(images[[3]] + 0.01, "b"), images[[3]])
    with pytest.raises(UnknownPrompt):
        prior.project(target, "dog")
    with pytest.raises(ValueError, match="must divide"):
        PatchExemplarPrior(images, LABELS, patch=3)
