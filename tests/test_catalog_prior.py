"""The embedded prior: a prompt's variants rendered at the query camera, exact at every camera."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdi.diffusion.denoiser import CountingDenoiser
from sdi.priors.catalog import SMOOTHING, CatalogPrior
from sdi.priors.exemplar import UnknownPrompt
from sdi.scene.cameras import Cameras, orbit_cameras
from sdi.scene.ground_truth import render_ground_truth
from sdi.scene.variants import catalog_variants

PROMPT = "a red cube with white stripes"
SIZE = 24


def off_grid_camera(seed: int = 3):
    """One camera at a random elevation, azimuth, distance and field of view (no grid anywhere)."""
    u = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
    return orbit_cameras(torch.tensor([-10 + 55 * u[0]]), torch.tensor([-180 + 360 * u[1]]),
                         1.5 + 0.5 * u[2], 40 + 30 * u[3], SIZE)


def x0_prediction(prior, x_t: torch.Tensor, t: int, prompt: str, cameras) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) of the prior's eps."""
    a = prior.alphas_cumprod[t].double()
    eps = prior.predict_eps(x_t, torch.tensor([t]), [prompt], cameras)[0]
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def variant_renders(cameras, n: int | None = None) -> torch.Tensor:
    """(K, 3, H, W) float64 ground-truth renders in [-1, 1] of each variant, one render call per variant."""
    variants = catalog_variants(CatalogPrior(PROMPT).target)[:n]
    return torch.stack([render_ground_truth(v, cameras, supersample=2).rgb[0].double() * 2 - 1 for v in variants])


def test_small_noise_predicts_the_nearest_variant_render_at_any_camera():
    prior = CatalogPrior(PROMPT, smoothing=0.0)  # the variants alone (the default widens each by SMOOTHING)
    for seed in (3, 11):
        cameras = off_grid_camera(seed)
        truth = variant_renders(cameras)
        k, t = 5, 20
        a = prior.alphas_cumprod[t].double()
        noise = torch.randn(truth[k].shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x_t = (a.sqrt() * truth[k] + (1 - a).sqrt() * noise)[None]
        x0 = x0_prediction(prior, x_t, t, PROMPT, cameras)[0]
        assert (x0 - truth[k]).abs().max() < 1e-3
        assert (truth - truth[k]).flatten(1).abs().max(1).values.sort().values[1] > 0.5  # the variants differ


@pytest.mark.parametrize("smoothing", [0.0, SMOOTHING])
@pytest.mark.parametrize("t", [960, 300])
def test_the_prediction_is_the_brute_force_posterior_mean_of_the_variants(smoothing, t):
    """Brute force over the variants' own renders: p(k | x_t) from |x_t - sqrt(a) X_k|^2 / 2 s^2 with
    s^2 = a s0^2 + 1 - a, and E[x0 | x_t, k] = X_k + sqrt(a) s0^2 / s^2 (x_t - sqrt(a) X_k)."""
    prior = CatalogPrior(PROMPT, smoothing=smoothing)
    cameras = off_grid_camera(5)
    truth = variant_renders(cameras)
    a = prior.alphas_cumprod[t].double()
    x_t = (a.sqrt() * truth[2] + (1 - a).sqrt() * torch.randn(truth[2].shape, dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(0)))[None]
    s2 = a * smoothing**2 + 1 - a
    log_w = torch.stack([-(x_t[0] - a.sqrt() * x).pow(2).sum() / (2 * s2) for x in truth])
    weights = torch.softmax(log_w, 0)
    means = torch.stack([x + a.sqrt() * smoothing**2 / s2 * (x_t[0] - a.sqrt() * x) for x in truth])
    expected = (weights[:, None, None, None] * means).sum(0)
    if t == 960:
        assert weights.max() < 0.9  # genuinely uncertain at large noise: several variants share the mass
    torch.testing.assert_close(x0_prediction(prior, x_t, t, PROMPT, cameras)[0], expected, atol=1e-5, rtol=0)


def test_joint_views_is_the_brute_force_posterior_over_variants_seen_from_every_camera():
    """A multi-view prior: p(k | x_t of both views) from the sum of both views' |x_t - sqrt(a) X_k(c)|^2 / 2 s^2;
    each view's prediction is that one posterior's mean of its own renders. One camera: the single-view prior."""
    t, k = 960, 2
    first, second = off_grid_camera(5), off_grid_camera(9)
    both = Cameras(torch.cat([first.c2w, second.c2w]), torch.cat([first.fovy, second.fovy]), SIZE, SIZE)
    truth = torch.stack([variant_renders(first), variant_renders(second)], 1)  # (K, 2, 3, H, W)
    joint, single = CatalogPrior(PROMPT, joint_views=True), CatalogPrior(PROMPT)
    a = joint.alphas_cumprod[t].double()
    noise = torch.randn(truth[k].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_t = a.sqrt() * truth[k] + (1 - a).sqrt() * noise
    s2 = a * SMOOTHING**2 + 1 - a
    log_w = torch.stack([-(x_t - a.sqrt() * x).pow(2).sum() / (2 * s2) for x in truth])
    weights = torch.softmax(log_w, 0)
    means = truth + a.sqrt() * SMOOTHING**2 / s2 * (x_t - a.sqrt() * truth)
    expected = (weights[:, None, None, None, None] * means).sum(0)
    eps = joint.predict_eps(x_t, torch.tensor([t]), [PROMPT], both)[0]
    torch.testing.assert_close((x_t - (1 - a).sqrt() * eps) / a.sqrt(), expected, atol=1e-5, rtol=0)
    independent = x0_prediction(single, x_t, t, PROMPT, both)
    assert (independent - expected).abs().max() > 1e-2  # two independent posteriors are not the joint one
    torch.testing.assert_close(x0_prediction(joint, x_t[:1], t, PROMPT, first),
                               x0_prediction(single, x_t[:1], t, PROMPT, first), atol=0, rtol=0)


def test_renders_once_per_batch_of_cameras_and_knows_any_spelling():
    prior = CatalogPrior(PROMPT)
    cameras = off_grid_camera(1)
    x = torch.zeros(1, 3, SIZE, SIZE)
    t = torch.tensor([500])
    first = prior.predict_eps(x, t, [PROMPT, ""], cameras)
    again = prior.predict_eps(x, t, ["A Red Cube, with White Stripes."], off_grid_camera(1))
    assert prior.renders == 1 and torch.equal(first[0], again[0])
    prior.predict_eps(x, t, [PROMPT], off_grid_camera(2))
    assert prior.renders == 2
    with pytest.raises(UnknownPrompt, match="a red cube with white stripes"):
        prior.predict_eps(x, t, ["a blue sphere"], cameras)
    with pytest.raises(ValueError, match="camera"):
        prior.predict_eps(x, t, [PROMPT], None)


def test_the_clean_label_minus_99_reads_alpha_zero():
    prior = CatalogPrior(PROMPT)
    cameras = off_grid_camera(4)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.predict_eps(x, torch.tensor([-99]), [PROMPT], cameras),
                       prior.predict_eps(x, torch.tensor([0]), [PROMPT], cameras))


def test_variants_share_the_geometry_and_differ_in_the_pattern():
    cameras = off_grid_camera(7)
    variants = catalog_variants(CatalogPrior(PROMPT).target)
    renders = [render_ground_truth(v, cameras, supersample=2) for v in variants[:4]]
    assert all(torch.equal(r.mask, renders[0].mask) for r in renders)
    assert variants[0] == catalog_variants(variants[0].obj)[0] and variants[0].obj.prompt == PROMPT
    assert len({tuple(r.rgb.flatten()[:500].tolist()) for r in renders}) == 4
    plain = catalog_variants(CatalogPrior("a blue sphere").target)
    assert all(v.yaw_deg == 0 and v.frequency == 1 for v in plain) and len({v.hue_turn for v in plain}) == 16


def test_a_training_step_renders_the_exemplars_once(tiny_preset):
    from sdi.train.loop import new_state, training_step

    tiny_preset = replace(tiny_preset, steps_per_target=1)  # a target, hence a render, every step
    prior = CatalogPrior("a red cube")
    denoiser = CountingDenoiser(prior)
    state = new_state(tiny_preset, 0)
    for _ in range(2):
        training_step(state, tiny_preset, tiny_preset.rule(), denoiser, "a red cube")
    assert prior.renders == 2 and denoiser.calls > 4  # the inversion's calls reuse the step's renders


def test_scores_name_the_nearest_variant_and_the_distance_to_the_mean():
    from sdi.bench.evaluate import score_against_variants
    from sdi.scene.cameras import held_out_cameras
    from sdi.scene.ground_truth import render_shared_geometry

    cameras = held_out_cameras(2, 24)
    renders = render_shared_geometry(catalog_variants(CatalogPrior(PROMPT).target), cameras, supersample=2)
    variants, mask = torch.stack([r.rgb for r in renders]), renders[0].mask
    on_mode = score_against_variants(variants[5], mask, variants, mask)
    assert on_mode["variant"] == 5 and on_mode["rms_to_nearest"] == 0 and on_mode["mask_iou"] == 1
    assert on_mode["rms_to_mean"] > 0.05 and on_mode["masked_detail_ratio"] == pytest.approx(1.0)
    blur = score_against_variants(variants.mean(0), mask, variants, mask)
    assert blur["rms_to_mean"] == 0 and blur["rms_to_nearest"] > 0.05 and blur["masked_detail_ratio"] < 0.8


def test_small_noise_predicts_the_nearest_variant_over_the_camera_background():
    """Over a coloured background (``Cameras.background``) the exemplars are the variants composited on it."""
    from dataclasses import replace

    prior = CatalogPrior(PROMPT, smoothing=0.0)
    cameras = off_grid_camera(9)
    colour = torch.tensor([[0.1, 0.6, 0.3]])
    coverage = render_ground_truth(catalog_variants(prior.target)[0], cameras, supersample=2).mask[0].double()
    truth = variant_renders(cameras) + (1 - coverage) * (colour[0, :, None, None].double() * 2 - 2)  # in [-1, 1]
    k, t = 4, 20
    a = prior.alphas_cumprod[t].double()
    noise = torch.randn(truth[k].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_t = (a.sqrt() * truth[k] + (1 - a).sqrt() * noise)[None]
    x0 = x0_prediction(prior, x_t, t, PROMPT, replace(cameras, background=colour))[0]
    assert (x0 - truth[k]).abs().max() < 1e-3
    assert (x0 - x0_prediction(prior, x_t, t, PROMPT, cameras)[0]).abs().max() > 0.5  # white is another image
    assert prior.renders == 2
