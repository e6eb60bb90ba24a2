"""Our DDIM sampling and inversion against diffusers' DDIMScheduler / DDIMInverseScheduler on a seeded
dummy noise model (the smalldiffusion way), in float64, to 1e-5."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from sdi.diffusion.ddim import ddim_invert, ddim_loop, ddim_sample, ddim_step, posterior_std
from sdi.diffusion.noise_sampler import ReplayNoise, generator_noise
from sdi.diffusion.schedules import alphas_cumprod, inversion_grid, linear_betas, sampling_grid, sd_alphas_cumprod

SD_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
TOL = dict(atol=1e-5, rtol=1e-5)


class DummyEps:
    """A fixed, seeded eps model, nonlinear in x and dependent on t: tanh(conv(x)) + cos(t / 150) x / 4."""

    def __init__(self, channels: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64) / 4
        self.bias = torch.randn(channels, generator=g, dtype=torch.float64) / 4

    def __call__(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1, 1)
        conv = torch.nn.functional.conv2d(x, self.weight, self.bias, padding=1)
        return torch.tanh(conv * (1 + t / 1000)) + torch.cos(t / 150) * x / 4


def _noise(seed: int = 1, shape=(2, 3, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def diffusers_sample(scheduler: DDIMScheduler, model, x: torch.Tensor, num_steps: int, x0_out=None) -> torch.Tensor:
    """The pipelines' denoising loop: model at t on the current latent, then scheduler.step (eta = 0)."""
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        out = scheduler.step(model(x, t), t, x)
        if x0_out is not None:
            x0_out.append(out.pred_original_sample)
        x = out.prev_sample
    return x


def diffusers_invert(scheduler: DDIMInverseScheduler, model, x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The inversion pipelines' loop (e.g. pix2pix-zero, DiffEdit): ascending timesteps, model at t."""
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


def test_sd_schedule_matches_diffusers():
    ours = sd_alphas_cumprod()
    theirs = DDIMScheduler(**SD_CONFIG).alphas_cumprod
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


# (spacing, set_alpha_to_one, steps_offset, num_steps). Trailing spacing ignores steps_offset in diffusers.
# Trailing only with step counts dividing 1000: otherwise diffusers' step() moves the sample to
# t - floor(1000 / n), which is not the next timestep it then evaluates at (e.g. n = 30: 966 -> 933, then
# evaluated as if at 932); our grids move it to the next timestep itself, so the two differ there.
SAMPLING_CASES = [
    ("leading", False, 1, 50),  # Stable Diffusion's configuration
    ("leading", False, 1, 30),  # 1000 / 30 is not an integer: the stride is floor(1000 / 30) = 33
    ("leading", True, 1, 50),
    ("leading", False, 0, 10),
    ("trailing", False, 1, 50),
    ("trailing", True, 0, 20),
    ("leading", True, 1, 1),
]


@pytest.mark.parametrize("spacing, to_one, offset, num_steps", SAMPLING_CASES)
def test_ddim_sample_matches_diffusers(spacing, to_one, offset, num_steps):
    scheduler = DDIMScheduler(**SD_CONFIG, set_alpha_to_one=to_one, steps_offset=offset, timestep_spacing=spacing)
    model, x_t = DummyEps(), _noise()
    expected = diffusers_sample(scheduler, model, x_t, num_steps)

    grid = sampling_grid(sd_alphas_cumprod(), num_steps, spacing, offset, final_alpha=1.0 if to_one else None)
    torch.testing.assert_close(grid.timesteps, scheduler.timesteps)
    result = ddim_sample(model, x_t, grid)
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, expected, **TOL)


@pytest.mark.parametrize("spacing, to_one, offset, num_steps", SAMPLING_CASES)
def test_ddim_invert_matches_diffusers(spacing, to_one, offset, num_steps):
    scheduler = DDIMInverseScheduler(
        **SD_CONFIG, set_alpha_to_one=to_one, steps_offset=offset, timestep_spacing=spacing
    )
    model, x0 = DummyEps(seed=2), _noise(3).clamp(-1, 1)
    expected = diffusers_invert(scheduler, model, x0, num_steps)

    grid = inversion_grid(sd_alphas_cumprod(), num_steps, spacing, offset, initial_alpha=1.0 if to_one else None)
    torch.testing.assert_close(grid.timesteps, scheduler.timesteps)
    torch.testing.assert_close(ddim_invert(model, x0, grid), expected, **TOL)


def test_ddim_loop_linear_schedule_and_callback():
    """DDPM's linear schedule through the bare loop; the callback's x0 is diffusers' pred_original_sample."""
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model, x_t = DummyEps(seed=4), _noise(5)
    x0_theirs: list[torch.Tensor] = []
    expected = diffusers_sample(scheduler, model, x_t, 25, x0_theirs)

    ac = alphas_cumprod(linear_betas())
    torch.testing.assert_close(ac, scheduler.alphas_cumprod, atol=1e-6, rtol=1e-5)
    x0_ours: list[torch.Tensor] = []
    result = ddim_loop(model, x_t, sampling_grid(ac, 25), callback=lambda step: x0_ours.append(step.x0))
    torch.testing.assert_close(result, expected, **TOL)
    assert len(x0_ours) == len(x0_theirs) == 25
    for ours, theirs in zip(x0_ours, x0_theirs):
        torch.testing.assert_close(ours, theirs, **TOL)


def test_invert_then_sample_round_trip():
    """With a model that ignores x and t, DDIM inversion then sampling over the same levels is exact
    (the two grids visit the same levels in opposite orders, evaluating the model at shifted timesteps)."""
    eps = _noise(6, (1, 3, 8, 8))
    constant = lambda x, t: eps  # noqa: E731
    ac = alphas_cumprod(linear_betas())
    x0 = _noise(7, (1, 3, 8, 8)).clamp(-1, 1)
    up, down = inversion_grid(ac, 20, initial_alpha=1.0), sampling_grid(ac, 20, final_alpha=1.0)
    torch.testing.assert_close(up.alphas.flip(0), down.alphas)
    torch.testing.assert_close(ddim_sample(constant, ddim_invert(constant, x0, up), down), x0, **TOL)


def test_ddim_loop_step_noise_is_seeded():
    """step_noise draws from the caller's noise sampler: same seed, same path; recorded draws replay in order,
    one per step, added as (step_noise z) x the posterior std; zero noise is plain DDIM."""
    ac = alphas_cumprod(linear_betas())
    grid, model, x0 = inversion_grid(ac, 10), DummyEps(), _noise(8)

    def run(seed: int) -> torch.Tensor:
        return ddim_loop(model, x0, grid, step_noise=1.0, noise=generator_noise(torch.Generator().manual_seed(seed)))

    torch.testing.assert_close(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    torch.testing.assert_close(ddim_loop(model, x0, grid, step_noise=0.0), ddim_invert(model, x0, grid))
    draws, steps = [_noise(20 + i) for i in range(len(grid))], []
    replay = ReplayNoise(draws)
    ddim_loop(model, x0, grid, steps.append, step_noise=0.3, noise=replay)
    assert replay.remaining == 0
    for step, z in zip(steps, draws):
        a, b = grid.alphas[step.i], grid.alphas[step.i + 1]
        torch.testing.assert_close(step.noise_std, posterior_std(torch.minimum(a, b), torch.maximum(a, b)))
        torch.testing.assert_close(step.x_next, ddim_step(step.x, step.eps, a, b) + 0.3 * z * step.noise_std)
    with pytest.raises(ValueError, match="noise sampler"):
        ddim_loop(model, x0, grid, step_noise=0.3)


@pytest.mark.parametrize("t, s", [(981, 961), (501, 481), (21, 1), (999, 0)])
def test_posterior_std_matches_diffusers_variance(t, s):
    """The DDPM posterior std between levels t > s is diffusers' sqrt(_get_variance(t, s)) (DDIM Eq. 16, eta = 1)."""
    scheduler = DDIMScheduler(**SD_CONFIG)
    ac = sd_alphas_cumprod()
    expected = scheduler._get_variance(t, s).sqrt()
    torch.testing.assert_close(posterior_std(ac[t], ac[s]), expected, atol=1e-6, rtol=1e-5)
    assert posterior_std(ac[t], ac[s]) > 0


def test_wrong_direction_is_refused():
    ac = sd_alphas_cumprod()
    with pytest.raises(ValueError, match="descending"):
        ddim_sample(DummyEps(), _noise(), inversion_grid(ac, 10))
    with pytest.raises(ValueError, match="ascending"):
        ddim_invert(DummyEps(), _noise(), sampling_grid(ac, 10))
