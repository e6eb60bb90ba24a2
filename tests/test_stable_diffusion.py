"""StableDiffusionPrior and Perp-Neg on a tiny random-weight Stable Diffusion built offline (tests/tiny_sd.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch


from tiny_sd import IMAGE_SIZE, LATENT_SIZE, build_tiny_sd  # noqa: E402

from sdi.diffusion.ddim import ddim_invert, ddim_sample  # noqa: E402
from sdi.diffusion.denoiser import CountingDenoiser, Denoiser, PromptMix, encode  # noqa: E402
from sdi.diffusion.guidance import Guidance, cfg_combine, eps_fn_for, guided_eps  # noqa: E402
from sdi.diffusion.noise_sampler import ReplayNoise  # noqa: E402
from sdi.diffusion.parametrization import eps_from_v  # noqa: E402
from sdi.diffusion.perp_neg import perp_neg_combine, perp_neg_eps, perp_neg_weights, perpendicular  # noqa: E402
from sdi.diffusion.schedules import inversion_grid, sampling_grid  # noqa: E402
from sdi.diffusion.views import DIRECTIONS, camera_angles, view_index, view_prompt  # noqa: E402
from sdi.scene.cameras import cameras_along, orbit_cameras  # noqa: E402
from sdi.priors.stable_diffusion import (  # noqa: E402
    PriorLoadError,
    StableDiffusionPrior,
    load_stable_diffusion,
    peak_memory_bytes,
)

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def eps_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_eps"), "epsilon")


@pytest.fixture(scope="module")
def v_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_v"), "v_prediction", seed=1)


@pytest.fixture(scope="module")
def prior(eps_folder):
    return load_stable_diffusion(str(eps_folder), "cpu")


@pytest.fixture(scope="module")
def v_prior(v_folder):
    return load_stable_diffusion(str(v_folder), "cpu")


def latents(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=g)


def with_options(p: StableDiffusionPrior, **options) -> StableDiffusionPrior:
    """A new prior on the same modules (and an empty text cache), with some options changed."""
    opts = dataclasses.replace(p.options, **options)
    return StableDiffusionPrior(p.unet, p.vae, p.text_encoder, p.tokenizer, p.alphas_cumprod, p.prediction_type, opts)


def direction(azimuth_deg: float, elevation_deg: float = 0.0) -> list[float]:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]


# -- loading ----------------------------------------------------------------------------------
def test_loads_offline_and_is_a_denoiser(eps_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = load_stable_diffusion(str(eps_folder), "cpu")
    assert isinstance(p, Denoiser)
    assert p.dtype == torch.float32 and p.prediction_type == "epsilon"
    assert p.alphas_cumprod.shape == (1000,)
    eps = p.predict_eps(latents(), torch.tensor([10, 500]), ["a cat", ""])
    assert eps.shape == (2, 2, 4, LATENT_SIZE, LATENT_SIZE) and torch.isfinite(eps).all()
    assert peak_memory_bytes("cpu") == 0


def test_loads_a_hub_id_from_the_cache_only(eps_folder, tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache layout (refs/main -> snapshots/<commit>)."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--tiny-org--tiny-sd"
    commit = "0" * 40
    shutil.copytree(eps_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    p = load_stable_diffusion("tiny-org/tiny-sd", "cpu", cache_dir=tmp_path)
    assert p.predict_eps(latents(1), torch.tensor([3]), [""]).shape == (1, 1, 4, LATENT_SIZE, LATENT_SIZE)
    with pytest.raises(PriorLoadError, match="not in the Hugging Face cache"):
        load_stable_diffusion("tiny-org/other-sd", "cpu", cache_dir=tmp_path)


def test_missing_weights_raise_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PriorLoadError) as info:
        load_stable_diffusion(str(tmp_path / "no_such_folder"))
    message = str(info.value)
    assert "\n" not in message and "local diffusers folder" in message
    with pytest.raises(PriorLoadError, match="hf download nobody-here/not-a-model"):
        load_stable_diffusion("nobody-here/not-a-model")
    with pytest.raises(PriorLoadError, match="lacks"):
        load_stable_diffusion(str(tmp_path))  # exists, but no unet/ etc.
    with pytest.raises(TypeError):
        load_stable_diffusion(str(tmp_path), gradient_checkpointing_vea=True)  # typo fails at load time


# -- predictions ------------------------------------------------------------------------------
def test_batched_branches_equal_separate_calls(prior):
    x, t = latents(), torch.tensor([20, 700])
    both = prior.predict_eps(x, t, ["a cat", ""])
    torch.testing.assert_close(both[0], prior.predict_eps(x, t, ["a cat"])[0], **TOL)
    torch.testing.assert_close(both[1], prior.predict_eps(x, t, [""])[0], **TOL)
    # and one UNet call for both branches
    calls = []
    handle = prior.unet.register_forward_hook(lambda *_: calls.append(1))
    prior.predict_eps(x, t, ["a cat", "", "a dog"])
    handle.remove()
    assert len(calls) == 1


def test_guided_eps_is_manual_cfg(prior):
    x, t = latents(), torch.tensor([300, 300])
    eps_c, eps_u = prior.predict_eps(x, t, ["a cat", ""])
    torch.testing.assert_close(guided_eps(prior, x, t, "a cat", 7.5), eps_u + 7.5 * (eps_c - eps_u), **TOL)
    torch.testing.assert_close(guided_eps(prior, x, t, "a cat", -7.5), eps_u - 7.5 * (eps_c - eps_u), **TOL)


def test_text_encoder_runs_once_per_prompt(prior):
    p = with_options(prior)  # same modules, empty cache
    calls = []
    handle = p.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    x, t = latents(), torch.tensor([5, 5])
    p.predict_eps(x, t, ["a cat", ""])
    p.predict_eps(x, t, ["a cat", ""])
    p.predict_eps(x, t, ["", "a cat"])
    handle.remove()
    assert len(calls) == 2 and set(p.text_embeddings) == {"a cat", ""}


def test_view_dependent_suffixes(prior):
    p = with_options(prior, view_dependent_prompts=True)
    views = torch.tensor([direction(0), direction(90), direction(-170), direction(30, 75), direction(-60)])
    cameras = cameras_along(views)
    names = [DIRECTIONS[i] for i in view_index(*camera_angles(cameras))]
    assert names == ["front", "side", "back", "overhead", "side"]
    expected = torch.cat([p.text_embedding(view_prompt("a cat", v)) for v in names])
    assert torch.equal(p.branch_embeddings("a cat", cameras, 5), expected)
    assert torch.equal(p.branch_embeddings("", cameras, 5), p.text_embedding("").expand(5, -1, -1))
    already = p.branch_embeddings("a cat, back view", cameras, 5)  # already names a view: left alone
    assert torch.equal(already, p.text_embedding("a cat, back view").expand(5, -1, -1))
    x, t = latents(5), torch.full((5,), 400)
    eps = p.predict_eps(x, t, ["a cat", ""], cameras)
    front = p.predict_eps(x[:1], t[:1], ["a cat, front view"])[0]
    torch.testing.assert_close(eps[0, :1], front, **TOL)


def test_view_bins_are_strict_at_threestudios_boundaries():
    """|az'| = 45 and 135 are side, elevation 60 is not overhead, azimuths are shifted into [-180, 180):
    exactly, because cameras built from angles carry them (no 45 -> 44.99999 round trip through c2w)."""
    azimuth = torch.tensor([44.99, 45.0, -45.0, -44.99, 135.0, 135.01, -135.0, -135.01, 225.0, 315.0, 180.0, 0.0, 0.0])
    elevation = torch.tensor([0.0] * 11 + [60.0, 60.01])
    names = [DIRECTIONS[i] for i in view_index(*camera_angles(orbit_cameras(elevation, azimuth, 2.0, 40.0, 8)))]
    assert names == ["front", "side", "side", "front", "side", "back", "side", "back", "side", "side", "back",
                     "front", "overhead"]


def test_prompt_mix_interpolates_embeddings_before_the_unet(prior):
    """threestudio's r E_front + (1 - r) E_side, bit for bit, per item; a one-hot row is the text itself."""
    texts, r = ("a cat, side view", "a cat, front view"), torch.tensor([0.25, 1.0])
    mix = PromptMix(texts, torch.stack([1 - r, r], 1))
    e_side, e_front = (prior.text_embedding(t)[0] for t in texts)
    got = prior.branch_embeddings(mix, None, 2)
    assert torch.equal(got[0], r[0] * e_front + (1 - r[0]) * e_side) and torch.equal(got[1], e_front)
    with pytest.raises(ValueError, match="rows for a batch"):
        prior.branch_embeddings(mix, None, 3)


def test_sampled_encoding_draws_from_the_callers_noise(prior):
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    sampled = with_options(prior, encode_mode="sample")
    n = torch.randn(1, 4, LATENT_SIZE, LATENT_SIZE)
    posterior = prior.vae.encode(image).latent_dist
    expected = (posterior.mean + posterior.std * n) * prior.scaling_factor
    torch.testing.assert_close(encode(sampled, image, ReplayNoise([n])), expected, **TOL)
    torch.testing.assert_close(encode(prior, image, ReplayNoise([])), posterior.mean * prior.scaling_factor, **TOL)
    with pytest.raises(ValueError, match="needs a noise sampler"):
        sampled.encode(image)


def test_encode_keeps_gradients(prior):
    image = (torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1).requires_grad_()
    z = prior.encode(image)
    assert z.shape == (2, 4, LATENT_SIZE, LATENT_SIZE)
    z.square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert prior.decode(z.detach()).shape == image.shape


def test_resize_to_model_encodes_any_render_size_at_the_model_size(prior):
    assert prior.image_size == IMAGE_SIZE
    image = (torch.rand(2, 3, 12, 12) * 2 - 1).requires_grad_()
    z = with_options(prior, resize_to_model=True).encode(image)
    upsampled = torch.nn.functional.interpolate(image.detach(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    torch.testing.assert_close(z, prior.encode(upsampled), **TOL)
    z.square().sum().backward()
    assert image.grad.abs().sum() > 0
    assert prior.encode(image.detach()).shape == (2, 4, 6, 6)  # without the option: the image's own size


def test_gradient_checkpointed_vae_gives_same_gradients(eps_folder, prior):
    p = load_stable_diffusion(str(eps_folder), "cpu", gradient_checkpointing_vae=True, enable_vae_slicing=True)
    grads = []
    for model in (prior, p):
        image = (torch.linspace(-1, 1, 2 * 3 * IMAGE_SIZE**2).reshape(2, 3, IMAGE_SIZE, IMAGE_SIZE)).requires_grad_()
        model.encode(image).square().sum().backward()
        grads.append(image.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


# -- v-prediction and DDIM against diffusers ----------------------------------------------------
def test_v_prediction_converted_to_eps(v_prior):
    assert v_prior.prediction_type == "v_prediction"
    x, t = latents(), torch.tensor([100, 900])
    emb = torch.cat([v_prior.text_embedding("a cat")] * 2)
    with torch.no_grad():
        v = v_prior.unet(x, t, encoder_hidden_states=emb).sample
    expected = eps_from_v(x, v, v_prior.alphas_cumprod[t].view(-1, 1, 1, 1))
    torch.testing.assert_close(v_prior.predict_eps(x, t, ["a cat"])[0], expected, **TOL)
    # The authors' label -99 of the clean latent sits at a(0), not at a(-99) = a(901).
    minus = torch.tensor([-99, -99])
    with torch.no_grad():
        v = v_prior.unet(x, minus, encoder_hidden_states=emb).sample
    expected = eps_from_v(x, v, v_prior.alphas_cumprod[0])
    torch.testing.assert_close(v_prior.predict_eps(x, minus, ["a cat"])[0], expected, **TOL)


def test_ddim_sampling_matches_diffusers_v_prediction(v_prior, v_folder):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(v_folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    steps, x_T = 10, latents(1, seed=3)
    emb = v_prior.text_embedding("a cat")
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = v_prior.unet(x, t, encoder_hidden_states=emb).sample
            x = scheduler.step(v, t, x).prev_sample
    ours = ddim_sample(eps_fn_for(v_prior, "a cat", 1.0), x_T, sampling_grid(v_prior.alphas_cumprod, steps))
    torch.testing.assert_close(ours, x, **TOL)


def test_ddim_inversion_matches_diffusers(prior, eps_folder):
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_pretrained(eps_folder, subfolder="scheduler")
    steps, x0 = 10, latents(1, seed=4)
    emb = prior.text_embedding("a cat")
    scheduler.set_timesteps(steps)
    x = x0.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(prior.unet(x, t, encoder_hidden_states=emb).sample, t, x).prev_sample
    grid = inversion_grid(prior.alphas_cumprod, steps, initial_alpha=float(scheduler.initial_alpha_cumprod))
    ours = ddim_invert(eps_fn_for(prior, "a cat", 1.0), x0, grid)
    torch.testing.assert_close(ours, x, **TOL)


# -- Perp-Neg ---------------------------------------------------------------------------------
def test_perp_neg_with_zero_weights_is_cfg():
    g = torch.Generator().manual_seed(0)
    eps_u, eps_p = torch.randn(2, 3, 4, 8, 8, generator=g)
    eps_n = torch.randn(2, 3, 4, 8, 8, generator=g)
    out = perp_neg_combine(eps_u, eps_p, list(eps_n), torch.zeros(3, 2), 7.5)
    torch.testing.assert_close(out, cfg_combine(eps_u, eps_p, 7.5))


def test_perp_neg_at_an_overhead_view_is_cfg_on_the_overhead_prompt(prior):
    p = with_options(prior, view_dependent_prompts=True)
    x, t = latents(), torch.tensor([250, 250])
    cameras = orbit_cameras(torch.tensor([70.0, 80.0]), torch.tensor([0.0, 100.0]), 2.0, 40.0, 8)
    out = guided_eps(p, x, t, "a cat", 7.5, cameras, Guidance(perp_neg="embeddings"))
    torch.testing.assert_close(out, guided_eps(p, x, t, "a cat, overhead view", 7.5), **TOL)


def test_perp_term_is_orthogonal_to_delta_pos():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, 8, 8, generator=g, dtype=torch.float64)
    dots = (perpendicular(a, b) * b).flatten(1).sum(1)
    torch.testing.assert_close(dots, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(perpendicular(b, b), torch.zeros_like(b), atol=1e-10, rtol=0)


def test_negative_scale_flips_every_guidance_term(prior):
    g = torch.Generator().manual_seed(2)
    eps_u, eps_p = torch.randn(2, 3, 4, 8, 8, generator=g)
    eps_n, w = torch.randn(2, 3, 4, 8, 8, generator=g), -torch.rand(3, 2, generator=g)
    plus, minus = (perp_neg_combine(eps_u, eps_p, list(eps_n), w, s) for s in (7.5, -7.5))
    torch.testing.assert_close(minus - eps_u, -(plus - eps_u))
    # same on the prior, in one batched call each
    x, t = latents(), torch.tensor([600, 600])
    cameras = cameras_along(torch.tensor([direction(30), direction(120)]))
    plus, minus = (perp_neg_eps(prior, x, t, "a cat", s, cameras) for s in (7.5, -7.5))
    eps_u = prior.predict_eps(x, t, [""])[0]
    torch.testing.assert_close(minus - eps_u, -(plus - eps_u), **TOL)


def test_perp_neg_weights_follow_threestudio():
    """r, the positive mix and the negatives' weights of threestudio's get_text_embeddings_perp_neg."""
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 80.0, 0.0])
    azimuth = torch.tensor([0.0, 90.0, -180.0, 45.0, 0.0, 60.0])
    pos, neg0, neg1, w = perp_neg_weights(elevation, azimuth)
    side, front, back, overhead, negative = torch.eye(5)
    torch.testing.assert_close(pos.sum(1), torch.ones(6))
    assert torch.equal(pos[0], front) and torch.equal(pos[1], side) and torch.equal(pos[2], back)
    torch.testing.assert_close(pos[3], 0.5 * (front + side))
    assert torch.equal(pos[4], overhead) and torch.equal(neg0[4], negative) and torch.equal(w[4], torch.zeros(2))
    r = 1 - 60 / 90  # front-side: negatives front and side
    assert torch.equal(neg0[5], front) and torch.equal(neg1[5], side)
    expected = [-(4 * math.exp(-0.5 * r) - 2.426), -(4 * math.exp(-0.5 * (1 - r)) - 2.426)]
    torch.testing.assert_close(w[5], torch.tensor(expected), atol=1e-6, rtol=0)
    # side-back at the back view (r = 0): negatives side and front
    assert torch.equal(neg0[2], side) and torch.equal(neg1[2], front)
    torch.testing.assert_close(w[2], torch.tensor([-(1 - 0.606), -(1 + 0.967)]), atol=1e-6, rtol=0)


def test_perp_neg_prediction_variant_agrees_at_bin_centres_only(prior):
    p = with_options(prior, view_dependent_prompts=True)
    x, t = latents(1), torch.tensor([500])
    for azimuth, same in ((0.0, True), (60.0, False)):
        cameras = orbit_cameras(torch.tensor([0.0]), torch.tensor([azimuth]), 2.0, 40.0, 8)
        by_embedding = perp_neg_eps(p, x, t, "a cat", 7.5, cameras)
        by_prediction = perp_neg_eps(p, x, t, "a cat", 7.5, cameras, mix="predictions")
        assert torch.allclose(by_embedding, by_prediction, atol=1e-5) == same


@pytest.mark.parametrize("rule_name", ["sdi-reference", "sdi-paper"])
def test_perp_neg_is_one_unet_batch_of_4_images_per_call(prior, rule_name):
    """B = 1 at a side view: every UNet call of the inversion and the forward call holds 4 images."""
    from sdi.distill.rule import distill_update
    from sdi.distill.sdi import sdi_paper, sdi_reference
    from sdi.distill.timesteps import Levels

    rule = sdi_reference() if rule_name == "sdi-reference" else sdi_paper()
    p = CountingDenoiser(with_options(prior, view_dependent_prompts=True))
    sizes = []
    handle = p.inner.unet.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    cameras = orbit_cameras(torch.tensor([10.0]), torch.tensor([90.0]), 2.0, 40.0, 8)
    steps = []
    distill_update(rule, p, latents(1), Levels(500, 530), "a cat", torch.Generator().manual_seed(0), {}, cameras,
                   steps.append)
    handle.remove()
    assert sizes == [4] * (len(steps) + 1) and p.calls == len(steps) + 1 and len(steps) == (6 if rule_name ==
                                                                                             "sdi-reference" else 5)


def test_speed_benchmark_runs_tiny(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_speed

    bench_speed.main(["--tiny", "--device", "cpu", "--iters", "1", "--warmup", "0", "--render", "32"])
    out = capsys.readouterr().out
    assert "sds" in out and "sdi" in out and "10k steps" in out
    assert "sdi-reference 8.625 (the authors' code: 8.625)" in out
