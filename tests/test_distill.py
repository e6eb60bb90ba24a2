"""Distillation rules: SDI-cached is DDIM, SDS is SDI with random kappa, Eq. 10 by hand, the kappa
estimators and t schedules, and one contract test over every rule factory and prior."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdi.diffusion.schedules import sampling_grid
from sdi.distill.csd import csd
from sdi.distill.ism import IntervalNoise, IntervalT, ism
from sdi.distill.nfsd import nfsd
from sdi.distill.noise import (
    Cached,
    FixedPoint,
    GradientDescent,
    Inversion,
    NoiseQuery,
    RandomFixed,
    RandomResampled,
    WithEntropy,
    eq8_residual,
)
from sdi.diffusion.guidance import Guidance, guided_eps
from sdi.diffusion.noise_sampler import ReplayNoise
from sdi.diffusion.parametrization import x0_from_eps
from sdi.diffusion.schedules import leading_inversion_levels, source_grid
from sdi.distill.rule import Rule, distill_step, distill_update, distillation_loss
from sdi.distill.sdi import sdi_cached, sdi_grid, sdi_paper, sdi_reference
from sdi.distill.sds import sds, sds_threestudio
from sdi.distill.timesteps import AnnealedT, GridT, Levels, RandomT, ThreestudioAnnealedT, UniformT
from sdi.twod import run_method

LABEL = "checker"
T = 1000


def image(prior, index: int = 0, batch: int = 2) -> torch.Tensor:
    """A batch of exemplars of LABEL, slightly perturbed so that no estimator is trivially exact."""
    idx = prior.members(LABEL)[index : index + batch]
    g = torch.Generator().manual_seed(123)
    return (prior.images[idx].float() + 0.05 * torch.randn(prior.images[idx].shape, generator=g)).clamp(-1, 1)


def query(prior, x0, t: int, seed: int = 0, cfg: float = 7.5, state=None, t_update=None) -> NoiseQuery:
    g = torch.Generator().manual_seed(seed)
    t_update = t if t_update is None else t_update
    return NoiseQuery(prior, x0, t, t_update, LABEL, cfg, None, g, {} if state is None else state)


def guided(prior, x_t, t: int, cfg: float, prompt: str = LABEL) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u), written out."""
    eps_c, eps_u = prior.predict_eps(x_t, torch.full((len(x_t),), t), [prompt, ""])
    return eps_u + cfg * (eps_c - eps_u)


# ------------------------------------------------------------------------- SDI-cached is DDIM


def test_sdi_cached_reproduces_the_ddim_trajectory(exemplar_prior):
    shape = (1, 3, 16, 16)
    ddim = run_method(exemplar_prior, "ddim", LABEL, 7.5, 12, seed=3, shape=shape)
    cached = run_method(exemplar_prior, "sdi-cached", LABEL, 7.5, 12, seed=3, shape=shape)
    assert len(ddim.snapshots) == len(cached.snapshots) == 8
    for a, b in zip(ddim.snapshots, cached.snapshots):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.image, ddim.image, atol=1e-5, rtol=0)
    # A different rule on the same seed is not DDIM: the comparison above can fail.
    sdi = run_method(exemplar_prior, "sds", LABEL, 7.5, 12, seed=3, shape=shape)
    assert (sdi.image - ddim.image).abs().max() > 1e-2


# ------------------------------------------------------------------ SDS = SDI with random kappa


@pytest.mark.parametrize("step", [0, 7])
def test_sds_is_sdi_with_random_resampled_kappa(exemplar_prior, step):
    x0 = image(exemplar_prior)
    sdi_as_sds = replace(sdi_paper(), noise=RandomResampled(), timesteps=sds().timesteps)
    reference = sds(cfg=sdi_as_sds.cfg)
    a = distill_step(sdi_as_sds, exemplar_prior, x0, step, 10, LABEL, torch.Generator().manual_seed(5), {})
    b = distill_step(reference, exemplar_prior, x0, step, 10, LABEL, torch.Generator().manual_seed(5), {})
    assert a.levels == b.levels
    torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0)

    # DreamFusion written out: t ~ U(0.02, 0.98) T, z ~ N(0, I), grad = w(t) (eps_cfg(x_t, t) - z).
    g = torch.Generator().manual_seed(5)
    t = int((0.02 + 0.96 * torch.rand((), generator=g).item()) * T)
    z = torch.randn(x0.shape, generator=g)
    alpha = exemplar_prior.alphas_cumprod[t]
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * z
    w = ((1 - alpha) / alpha).sqrt()
    expected = w * (guided(exemplar_prior, x_t, t, 7.5) - z)
    assert a.levels.t == t
    torch.testing.assert_close(a.grad, expected, atol=1e-5, rtol=1e-5)

    # DreamFusion's own weighting w(t) = 1 - a(t), same draws.
    df = distill_step(sds(cfg=7.5, weighting="one_minus_alpha"), exemplar_prior, x0, step, 10, LABEL,
                      torch.Generator().manual_seed(5), {})
    torch.testing.assert_close(df.grad, (1 - alpha) * (guided(exemplar_prior, x_t, t, 7.5) - z), atol=1e-5, rtol=1e-5)


def test_sds_draws_depend_on_the_generator(exemplar_prior):
    x0 = image(exemplar_prior)
    a = distill_step(sds(), exemplar_prior, x0, 0, 10, LABEL, torch.Generator().manual_seed(1), {})
    b = distill_step(sds(), exemplar_prior, x0, 0, 10, LABEL, torch.Generator().manual_seed(2), {})
    assert not torch.equal(a.noise.kappa, b.noise.kappa)


# ------------------------------------------------------------ Eq. 10 with cached kappa = DDIM step


@pytest.mark.parametrize("step", [1, 5, 9])
def test_eq10_with_cached_kappa_is_a_ddim_step_on_x0(exemplar_prior, step):
    x0, total, cfg = image(exemplar_prior), 10, 4.0
    eps_prev = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    rule = Rule("cached", GridT(), Cached(), cfg)
    update = distill_step(rule, exemplar_prior, x0, step, total, LABEL, torch.Generator(), {"last_eps": eps_prev})

    # By hand: x_t = sqrt(a) x0 + sqrt(1 - a) eps_prev at the grid's level; DDIM's x0 prediction there.
    t = int(sampling_grid(exemplar_prior.alphas_cumprod, total).timesteps[step])
    a = exemplar_prior.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps_prev
    eps = guided(exemplar_prior, x_t, t, cfg)
    x0_ddim = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    assert update.levels.t == t
    torch.testing.assert_close(update.x_t, x_t, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(update.target, x0_ddim, atol=1e-5, rtol=1e-5)
    # ... and the update is sigma(t) (eps - kappa).
    torch.testing.assert_close(update.grad, ((1 - a) / a).sqrt() * (eps - eps_prev), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- kappa estimators

ESTIMATORS = {
    "random-resampled": RandomResampled(),
    "random-fixed": RandomFixed(),
    "fixed-point": FixedPoint(iterations=3),
    "gradient-descent": GradientDescent(iterations=3),
    "inversion": Inversion(steps=4),
    "cached": Cached(),
    "with-entropy": WithEntropy(Inversion(steps=2), 0.3),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_return_kappa_of_the_image_shape(exemplar_prior, name):
    x0 = image(exemplar_prior)
    state = {"initial_noise": torch.randn(x0.shape)}
    noise = ESTIMATORS[name](query(exemplar_prior, x0, 500, state=state))
    assert noise.kappa.shape == x0.shape
    assert noise.kappa.dtype == x0.dtype
    assert torch.isfinite(noise.kappa).all()
    assert noise.subtract is noise.kappa  # only ISM-like rules subtract something else


def test_random_fixed_is_drawn_once_per_run(exemplar_prior):
    x0, state = image(exemplar_prior), {}
    first = RandomFixed()(query(exemplar_prior, x0, 500, seed=1, state=state)).kappa
    again = RandomFixed()(query(exemplar_prior, x0, 300, seed=2, state=state)).kappa
    assert torch.equal(first, again)
    other_run = RandomFixed()(query(exemplar_prior, x0, 500, seed=2, state={})).kappa
    assert not torch.equal(first, other_run)


def test_cached_uses_the_initial_noise_then_the_last_prediction(exemplar_prior):
    x0 = image(exemplar_prior)
    z, last = torch.randn(x0.shape), torch.randn(x0.shape)
    assert torch.equal(Cached()(query(exemplar_prior, x0, 500, state={"initial_noise": z})).kappa, z)
    both = {"initial_noise": z, "last_eps": last}
    assert torch.equal(Cached()(query(exemplar_prior, x0, 500, state=both)).kappa, last)
    with pytest.raises(ValueError, match="initial_noise"):
        Cached()(query(exemplar_prior, x0, 500))


@pytest.mark.parametrize("start", ["perturbed", "blend"])
def test_inversion_solves_eq8_better_than_random_noise(exemplar_prior, start):
    x0 = image(exemplar_prior, batch=4)
    if start == "blend":  # halfway between exemplars, off the data
        x0 = 0.5 * (x0 + image(exemplar_prior, index=4, batch=4))
    # Mid t: well below it the exemplar posterior has collapsed onto one image for any kappa, and every
    # kappa has the same residual (the distance to that image).
    q = query(exemplar_prior, x0, 700)
    paper = eq8_residual(q, Inversion(steps=10)(q).kappa).mean()  # the paper's cfg = -7.5 inversion
    random = torch.stack([eq8_residual(q, q.randn()) for _ in range(4)]).mean()
    assert paper < 0.6 * random, (paper, random)


def test_inversion_step_noise_comes_from_the_generator(exemplar_prior):
    x0 = image(exemplar_prior)
    est = Inversion(steps=3, step_noise=0.3)
    a = est(query(exemplar_prior, x0, 500, seed=1)).kappa
    a_again = est(query(exemplar_prior, x0, 500, seed=1)).kappa
    b = est(query(exemplar_prior, x0, 500, seed=2)).kappa
    assert torch.equal(a, a_again)
    assert not torch.allclose(a, b)
    # Without step noise the inversion is deterministic whatever the seed.
    clean = Inversion(steps=3)
    one, two = (clean(query(exemplar_prior, x0, 500, seed=s)).kappa for s in (1, 2))
    assert torch.equal(one, two)


def test_with_entropy_adds_scaled_gaussian_noise(exemplar_prior):
    x0 = image(exemplar_prior)
    inner = Inversion(steps=2)
    base = inner(query(exemplar_prior, x0, 400, seed=4)).kappa
    q = query(exemplar_prior, x0, 400, seed=4)
    noisy = WithEntropy(inner, 0.3)(q).kappa
    # The inner estimator draws nothing, so the entropy is the generator's first draw.
    expected = base + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(noisy, expected, atol=1e-6, rtol=0)


def test_ism_baseline_is_the_unconditional_prediction_at_s(exemplar_prior):
    x0, s, t = image(exemplar_prior), 450, 500
    noise = IntervalNoise(stride=1.0, max_steps=1)(query(exemplar_prior, x0, s, t_update=t))
    # One inversion step from the clean image (a = 1) to s, model at the destination s.
    a_s, a_t = exemplar_prior.alphas_cumprod[s], exemplar_prior.alphas_cumprod[t]
    eps_0 = exemplar_prior.predict_eps(x0, torch.full((2,), s), [""])[0]
    x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps_0
    eps_s = exemplar_prior.predict_eps(x_s, torch.full((2,), s), [""])[0]
    torch.testing.assert_close(noise.baseline, eps_s, atol=1e-5, rtol=1e-5)
    # x_t is one DDIM step from x_s to t with eps_s, and kappa places it: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) kappa.
    x_t = a_t.sqrt() * (x_s - (1 - a_s).sqrt() * eps_s) / a_s.sqrt() + (1 - a_t).sqrt() * eps_s
    torch.testing.assert_close(a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise.kappa, x_t, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(noise.subtract, noise.kappa)


# ------------------------------------------------------------------------------- t schedules


def test_annealed_t_goes_from_start_to_end_with_tau_in_bounds():
    schedule, total = AnnealedT(0.98, 0.2, tau_max=0.1), 20
    g = torch.Generator().manual_seed(0)
    levels = [schedule(step, total, T, g) for step in range(total)]
    assert levels[0].t == 980
    # 0.98 + (0.2 - 0.98) is 0.19999999999999996 in floating point: allow the truncation to 199.
    assert schedule.fraction(total - 1, total) == pytest.approx(0.2)
    assert abs(levels[-1].t - 200) <= 1
    ts = [lv.t for lv in levels]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == total
    taus = [lv.t_kappa - lv.t for lv in levels]
    assert all(0 <= tau <= 0.1 * T + 1 for tau in taus)
    assert max(taus) > 10  # tau is drawn, not 0
    # The schedule is a pure function of (step, generator state): same seed, same levels.
    g2 = torch.Generator().manual_seed(0)
    assert levels == [schedule(step, total, T, g2) for step in range(total)]


def test_annealed_t_horizon_and_no_tau():
    schedule = AnnealedT(0.9, 0.5, tau_max=0.0, horizon=11)
    g = torch.Generator()
    assert schedule(10, 100, T, g) == schedule(50, 100, T, g)  # past the horizon t stays at the end
    assert schedule(10, 100, T, g).t == schedule(10, 100, T, g).t_kappa == 500
    assert schedule(5, 100, T, g).t == 700


def test_grid_t_walks_the_ddim_grid(exemplar_prior):
    total, g = 10, torch.Generator()
    grid = sampling_grid(exemplar_prior.alphas_cumprod, total).timesteps.tolist()
    levels = [GridT()(step, total, T, g) for step in range(total)]
    assert [lv.t for lv in levels] == grid
    assert levels[0].t_kappa == T - 1
    assert [lv.t_kappa for lv in levels[1:]] == grid[:-1]


def test_random_t_stays_in_range_and_follows_the_generator():
    schedule = RandomT(0.3, 0.6)
    g = torch.Generator().manual_seed(0)
    levels = [schedule(0, 1, T, g) for _ in range(200)]
    assert all(300 <= lv.t <= 600 and lv.t_kappa == lv.t for lv in levels)
    assert len({lv.t for lv in levels}) > 50
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert [schedule(0, 1, T, g1).t for _ in range(5)] != [schedule(0, 1, T, g2).t for _ in range(5)]


def test_interval_t_puts_s_below_t():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        lv = IntervalT(delta=0.05)(0, 1, T, g)
        assert lv.t_kappa == lv.t - 50 and 20 <= lv.t_kappa


# --------------------------------------------------------------------- contract: every rule, every prior

RULES = {
    "sds": lambda: sds(),
    "sds-threestudio": lambda: sds_threestudio(),
    "sdi-paper": lambda: sdi_paper(),
    "sdi-reference": lambda: sdi_reference(),
    "sdi-grid": lambda: sdi_grid(),
    "sdi-cached": lambda: sdi_cached(),
    "ism": lambda: ism(),
    "nfsd": lambda: nfsd(negative=""),
    "csd": lambda: csd(),
}


def _contract(rule: Rule, prior, x0, prompt: str, cameras) -> None:
    moved = False
    state = {"initial_noise": torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))}
    g = torch.Generator().manual_seed(0)
    for step in (0, 2, 4):
        update = distill_step(rule, prior, x0, step, 5, prompt, g, state, cameras)
        assert update.grad.shape == x0.shape == update.target.shape == update.x_t.shape
        assert torch.isfinite(update.grad).all() and torch.isfinite(update.target).all()
        torch.testing.assert_close(update.target, x0 - update.grad, atol=0, rtol=0)
        num_train = len(prior.alphas_cumprod)
        assert 0 <= update.levels.t < num_train and 0 <= update.levels.t_kappa < num_train
        assert update.noise.kappa.shape == x0.shape
        assert not update.grad.requires_grad
        moved |= bool(update.grad.abs().sum() > 0)
    assert moved, "the rule never moved x0"


@pytest.mark.parametrize("name", list(RULES))
def test_rule_contract_on_the_exemplar_prior(exemplar_prior, name):
    # Between two classes, so that conditional and unconditional predictions differ (CSD, NFSD).
    x0 = 0.5 * (image(exemplar_prior) + exemplar_prior.images[exemplar_prior.members("stripes")[:2]].float())
    _contract(RULES[name](), exemplar_prior, x0, LABEL, None)


@pytest.mark.parametrize("name", list(RULES))
def test_rule_contract_on_the_catalog_prior(catalog_prior, name):
    from sdi.scene.cameras import CameraSampling
    from sdi.scene.ground_truth import render_ground_truth

    cameras = CameraSampling().sample(2, 16, torch.Generator().manual_seed(0))
    x0 = (render_ground_truth(catalog_prior.target, cameras).rgb * 2 - 1) * 0.8
    _contract(RULES[name](), catalog_prior, x0, "a red cube", cameras)


def test_every_rule_module_is_in_the_contract():
    import pkgutil

    import sdi.distill

    modules = {m.name for m in pkgutil.iter_modules(sdi.distill.__path__)} - {"rule", "noise", "timesteps"}
    covered = {"sds", "sdi", "ism", "nfsd", "csd"}
    assert modules <= covered, f"add the rules of {sorted(modules - covered)} to RULES"


# ------------------------------------------------------------------ the authors' SDI, piece by piece


class Recording:
    """A denoiser with a closed-form eps (0.3 x_t + 0.1 per prompt index) that records every call's labels and
    batch size; it reads a(max(t, 0)) as the protocol asks (here: nothing, eps does not depend on t)."""

    free_text = True

    def __init__(self):
        from sdi.diffusion.schedules import sd_alphas_cumprod

        self.alphas_cumprod, self.calls = sd_alphas_cumprod(), []

    def predict_eps(self, x_t, t, prompts, cameras=None):
        self.calls.append((t.tolist(), len(prompts) * len(x_t)))
        return torch.stack([0.3 * x_t + 0.1 * k for k in range(len(prompts))])

    def encode(self, image):
        return image

    def decode(self, latent):
        return latent


@pytest.mark.parametrize("t, end, expected", [
    (250, 287, [-99, 1, 101, 201, 287]),
    (500, 563, [-99, 1, 101, 201, 301, 401, 563]),
    (980, 999, [-99, *range(1, 902, 100), 999]),
    (733, 733, [-99, *range(1, 702, 100), 733]),
])
def test_leading_inversion_levels_are_the_authors(t, end, expected):
    levels = leading_inversion_levels(T, t, end)
    assert levels.tolist() == expected
    ac = torch.linspace(0.999, 0.001, T)
    grid = source_grid(ac, levels)
    assert grid.timesteps.tolist() == expected[:-1]  # labelled with the SOURCE level, -99 first
    assert torch.equal(grid.alphas, ac[[0, *expected[1:]]])  # -99 sits at a(0)


def test_reference_inversion_labels_sources_adds_entropy_every_step_and_forwards_the_inverted_latent():
    prior, x0 = Recording(), torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    draws = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    steps, noise = [], ReplayNoise(draws)
    rule = sdi_reference(perp_neg=False)
    update = distill_update(rule, prior, x0, Levels(250, 287), "a cat", noise, {}, None, steps.append)
    assert noise.remaining == 0 and len(steps) == 4
    assert [c[0][0] for c in prior.calls] == [-99, 1, 101, 201, 250]  # source labels, then the forward call at t
    ac = prior.alphas_cumprod
    levels = [0, 1, 101, 201, 287]
    for i, step in enumerate(steps):
        a_s, a_d = ac[levels[i]], ac[levels[i + 1]]
        eps_c, eps_u = 0.3 * step.x, 0.3 * step.x + 0.1  # threestudio's form without Perp-Neg: e_c + s (e_c - e_u)
        eps = eps_c - 7.5 * (eps_c - eps_u)
        std = ((1 - a_s) / (1 - a_d) * (1 - a_d / a_s)).sqrt()
        ddim = a_d.sqrt() * (step.x - (1 - a_s).sqrt() * eps) / a_s.sqrt() + (1 - a_d).sqrt() * eps
        torch.testing.assert_close(step.x_next, ddim + 0.3 * draws[i] * std, atol=1e-5, rtol=1e-5)
    assert update.x_t is steps[-1].x_next  # the forward call runs on x(t + delta) itself
    a_t = ac[250]
    eps_c = 0.3 * update.x_t
    torch.testing.assert_close(update.eps, eps_c + 7.5 * (eps_c - (eps_c + 0.1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(update.target, x0_from_eps(update.x_t, update.eps, a_t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(update.noise.kappa, (update.x_t - ac[287].sqrt() * x0) / (1 - ac[287]).sqrt())


def test_threestudio_annealed_t_is_the_authors_schedule():
    schedule, g = ThreestudioAnnealedT(), torch.Generator().manual_seed(0)
    levels = [schedule(step, 300, T, g) for step in range(0, 10_000, 7)]
    assert levels[0].t == 980 and schedule(9999, 300, T, g).t == 250 and schedule(5000, 10, T, g).t == 615
    deltas = [lv.t_kappa - lv.t for lv in levels]
    assert min(deltas) == 0 and max(deltas) == 99  # int(u T // 10)
    assert schedule(0, 1, T, g).t_kappa <= 999


def test_sdi_reference_makes_8625_unet_calls_per_step_over_the_10k_schedule():
    """The authors' code's 8.625 (PAPER.md), from our rule's own schedule and inversion path."""
    rule, g, calls = sdi_reference(), torch.Generator().manual_seed(0), 0
    ac = Recording().alphas_cumprod
    for step in range(10_000):
        levels = rule.timesteps(step, 10_000, T, g)
        calls += len(rule.noise.grid(ac, levels.t_kappa, levels.t)) + 1
    assert calls / 10_000 == 8.625


def test_uniform_t_is_threestudios_inclusive_integer_draw():
    g = torch.Generator().manual_seed(0)
    ts = {UniformT(20, 22)(0, 1, T, g).t for _ in range(200)}
    assert ts == {20, 21, 22}


# ---------------------------------------------------------------------------- one loss convention


def test_one_loss_convention_and_threestudios_sds_sum_inside_it(exemplar_prior):
    x0 = image(exemplar_prior)
    for rule in (sdi_paper(), sds(), sds_threestudio()):
        update = distill_step(rule, exemplar_prior, x0, 0, 10, LABEL, torch.Generator().manual_seed(0), {})
        latent = x0.clone().requires_grad_()
        loss = update.loss(latent)
        loss.backward()
        B, N = len(x0), x0.numel()
        if rule.loss_weight == "elements":  # threestudio SDS: 0.5 sum / B, d loss / d x0 = grad / B
            torch.testing.assert_close(loss, 0.5 * update.grad.pow(2).sum() / B)
            torch.testing.assert_close(latent.grad, update.grad / B)
        else:  # the authors' SDI mean: 0.5 mean / B, d loss / d x0 = grad / (B N)
            torch.testing.assert_close(loss, distillation_loss(latent, update.target))
            torch.testing.assert_close(latent.grad, update.grad / (B * N))


# ---------------------------------------------------------------------------------- randomness, CFG


def test_replay_noise_serves_draws_in_order_and_refuses_more_or_other_shapes():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    noise = ReplayNoise([a, b])
    assert torch.equal(noise(a), a) and torch.equal(noise(a), b) and noise.remaining == 0
    with pytest.raises(IndexError, match="already served"):
        noise(a)
    with pytest.raises(ValueError, match="shape"):
        ReplayNoise([a])(torch.zeros(3, 2))


def test_every_draw_of_a_rule_comes_from_the_callers_noise(exemplar_prior):
    """sdi-paper draws its entropy noise once; the same draws replayed give the same update."""
    x0 = image(exemplar_prior)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    runs = [distill_update(sdi_paper(), exemplar_prior, x0, Levels(600, 620), LABEL, ReplayNoise([z]), {})
            for _ in range(2)]
    assert torch.equal(runs[0].grad, runs[1].grad)
    inner = Inversion()(query(exemplar_prior, x0, 620, t_update=600)).kappa
    torch.testing.assert_close(runs[0].noise.kappa, inner + 0.3 * z)


def test_perp_neg_on_a_prior_without_free_text_is_eq3_cfg(exemplar_prior):
    x0, t = image(exemplar_prior), torch.full((2,), 500)
    plain = guided_eps(exemplar_prior, x0, t, LABEL, 7.5)
    assert torch.equal(guided_eps(exemplar_prior, x0, t, LABEL, 7.5, None, Guidance(perp_neg="embeddings")), plain)
    quirk = guided_eps(exemplar_prior, x0, t, LABEL, 7.5, None, Guidance(anchor="cond"))
    eps_c, eps_u = exemplar_prior.predict_eps(x0, t, [LABEL, ""])
    torch.testing.assert_close(quirk, eps_c + 7.5 * (eps_c - eps_u))  # threestudio's form: effective 8.5
    torch.testing.assert_close(quirk, guided_eps(exemplar_prior, x0, t, LABEL, 8.5), atol=1e-5, rtol=1e-5)
