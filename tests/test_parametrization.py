"""eps / x0 / v conversions, timestep spacing and level grids: round trips, diffusers' formulas, endpoints."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from sdi.diffusion.parametrization import add_noise, eps_from_v, eps_from_x0, v_from_eps, x0_from_eps, x0_from_v
from sdi.diffusion.schedules import Grid, level_grid, sd_alphas_cumprod, sigma, spaced_timesteps

TOL = dict(atol=1e-10, rtol=1e-10)
SD_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)


def _tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    return x0, eps


@pytest.mark.parametrize("alpha", [0.999, 0.5, 0.01])
def test_round_trips(alpha):
    a = torch.tensor(alpha, dtype=torch.float64)
    x0, eps = _tensors()
    x_t = add_noise(x0, eps, a)
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, **TOL)
    torch.testing.assert_close(eps_from_x0(x_t, x0, a), eps, **TOL)
    v = v_from_eps(x_t, eps, a)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps, **TOL)
    torch.testing.assert_close(x0_from_v(x_t, v, a), x0, **TOL)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0, **TOL)  # Salimans & Ho's definition


def test_per_sample_alphas_broadcast():
    a = torch.tensor([0.9, 0.2], dtype=torch.float64).reshape(2, 1, 1, 1)
    x0, eps = _tensors(1)
    x_t = add_noise(x0, eps, a)
    torch.testing.assert_close(x_t[1], add_noise(x0[1], eps[1], a[1]), **TOL)
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, **TOL)


@pytest.mark.parametrize("t", [1, 250, 999])
def test_matches_diffusers_v_prediction(t):
    """add_noise and v_from_eps equal diffusers' add_noise / get_velocity; x0_from_v and eps_from_v equal
    the pred_original_sample / pred_epsilon of a v-prediction DDIMScheduler step."""
    scheduler = DDIMScheduler(**SD_CONFIG, prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(50)
    a = scheduler.alphas_cumprod[t].double()
    x0, eps = _tensors(2)
    ts = torch.full((2,), t, dtype=torch.long)
    x_t = add_noise(x0, eps, a)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, eps, ts), atol=1e-6, rtol=1e-6)
    v = v_from_eps(x_t, eps, a)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, eps, ts), atol=1e-6, rtol=1e-6)

    out = scheduler.step(v, t, x_t)
    torch.testing.assert_close(x0_from_v(x_t, v, a), out.pred_original_sample, atol=1e-6, rtol=1e-6)
    # prev_sample = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, so eps_from_v is what the scheduler used.
    t_prev = t - 1000 // 50
    a_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    expected = add_noise(x0_from_v(x_t, v, a), eps_from_v(x_t, v, a), a_prev.double())
    torch.testing.assert_close(out.prev_sample, expected, atol=1e-6, rtol=1e-6)


def test_sigma():
    a = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(sigma(a), torch.tensor([3.0**0.5, 1.0], dtype=torch.float64))
    assert float(sigma(0.2)) == pytest.approx(2.0)


@pytest.mark.parametrize("num_steps", [1, 7, 10, 30, 50, 333, 1000])
@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("trailing", 1)])
def test_spaced_timesteps_match_diffusers(num_steps, spacing, offset):
    scheduler = DDIMScheduler(**SD_CONFIG, steps_offset=offset, timestep_spacing=spacing)
    scheduler.set_timesteps(num_steps)
    ours = spaced_timesteps(1000, num_steps, spacing, offset if spacing == "leading" else 0)
    assert ours.dtype == torch.int64
    # Leading + offset 1 + 1000 steps: diffusers lists t = 1000, past its own schedule; we clamp to 999.
    torch.testing.assert_close(ours, scheduler.timesteps.flip(0).clamp(max=999))
    assert len(ours) == num_steps and bool((ours[1:] >= ours[:-1]).all())


def test_spaced_timesteps_errors():
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="num_steps"):
            spaced_timesteps(1000, bad)
    with pytest.raises(ValueError, match="leading"):
        spaced_timesteps(1000, 10, "linspace")  # type: ignore[arg-type]


def test_level_grid_inversion_endpoints():
    ac = sd_alphas_cumprod()
    grid = level_grid(ac, -1, 999, 10)
    assert len(grid) == 10 and len(grid.alphas) == 11
    assert float(grid.alphas[0]) == 1.0  # t_from = -1 is the clean image
    assert float(grid.alphas[-1]) == float(ac[999])
    assert int(grid.timesteps[-1]) == 999  # model evaluated at the destination
    assert bool((grid.timesteps[1:] > grid.timesteps[:-1]).all())
    torch.testing.assert_close(grid.alphas[1:], ac[grid.timesteps])
    assert float(level_grid(ac, -1, 500, 4, initial_alpha=float(ac[0])).alphas[0]) == float(ac[0])


def test_level_grid_sampling_endpoints():
    ac = sd_alphas_cumprod()
    grid = level_grid(ac, 800, 200, 6)
    assert int(grid.timesteps[0]) == 800  # model evaluated at the source
    torch.testing.assert_close(grid.alphas[:-1], ac[grid.timesteps])
    assert float(grid.alphas[-1]) == float(ac[200])
    assert bool((grid.timesteps[1:] < grid.timesteps[:-1]).all())
    torch.testing.assert_close(grid.timesteps, torch.tensor([800, 700, 600, 500, 400, 300]))


def test_level_grid_single_step_and_errors():
    ac = sd_alphas_cumprod()
    grid = level_grid(ac, 100, 600, 1)
    torch.testing.assert_close(grid.timesteps, torch.tensor([600]))
    torch.testing.assert_close(grid.alphas, ac[[100, 600]])
    with pytest.raises(ValueError, match="num_steps"):
        level_grid(ac, -1, 999, 0)
    with pytest.raises(ValueError, match="one more alpha"):
        Grid(torch.tensor([1, 2]), torch.tensor([0.5, 0.4]))
