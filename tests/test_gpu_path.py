"""The GPU path without needless work: host syncs per step, two-pass rendering, the fused hash grid, device-side
shading choice, and K-view steps with antithetic cameras (issue 12). Everything runs on the CPU."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

import sdi.scene.fields as fields
from sdi.diffusion.denoiser import CountingDenoiser
from sdi.distill.noise import Inversion
from sdi.distill.rule import Rule, distill_step
from sdi.distill.timesteps import AnnealedT
from sdi.profiling import SyncCounter
from sdi.scene.cameras import Cameras, CameraSampling, orbit_cameras
from sdi.scene.compiled import compile_field
from sdi.scene.fields import FieldOutput, HashGridField, HashGridFieldConfig, SolidBackground, TcnnFallbackWarning
from sdi.scene.hashgrid import HashGridEncoding
from sdi.scene.occupancy import OccupancyGrid
from sdi.scene.renderer import SHADING_MODES, render, shade
from sdi.train.loop import new_state, sample_shading, training_step, views_loss
from sdi.train.presets import FAST, SDI_PAPER, views_line, with_views_per_step
from sdi.train.run import RunConfig
from tiny_sd import build_tiny_sd

TINY_HASH = HashGridFieldConfig(n_levels=4, log2_hashmap_size=10, hidden_dim=16, use_tcnn=False)


@pytest.fixture(scope="module")
def sd_prior(tmp_path_factory):
    from sdi.priors.stable_diffusion import load_stable_diffusion

    folder = build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")
    return load_stable_diffusion(str(folder), "cpu", options=SDI_PAPER.stable_diffusion)


def paper_at_test_size(**render_options):
    """sdi-paper (hash grid, two-pass render, finite-difference normals, mixed shading) at 16 x 16 x 32."""
    render_opts = replace(SDI_PAPER.render, occupancy_resolution=16, **render_options)
    return replace(SDI_PAPER, resolution=16, num_samples=32, steps=20, radiance_field=TINY_HASH, render=render_opts)


# ------------------------------------------------------------------ host syncs per step

HOST_ONLY = ("sdi/diffusion/schedules.py", "sdi/diffusion/ddim.py", "torch/optim/")
"""Sites that read host tensors in a GPU run too (the schedule's alphas_cumprod and grids live on the CPU in every
prior; Adam's step counters are CPU tensors unless capturable): counted by SyncCounter, no device sync."""
OTHER_AREAS = ("sdi/diffusion/", "sdi/distill/", "sdi/priors/")
"""Syncs that remain, in code outside the GPU-path work of this file: timesteps.AnnealedT reads tau once per step
(.item() on the run's generator). View bins and Perp-Neg weights come from the cameras' exact angles on the host."""


@pytest.mark.parametrize("strategy", ["two_pass", "single_pass"])
def test_a_step_syncs_only_to_pack_render_samples(sd_prior, strategy):
    preset = paper_at_test_size(strategy=strategy)
    state, rule, denoiser = new_state(preset, seed=0), preset.rule(), CountingDenoiser(sd_prior)
    training_step(state, preset, rule, denoiser, "a cat")  # step 0 updates the occupancy grid: syncs too
    denoiser.calls = 0
    with SyncCounter() as syncs:
        info = training_step(state, preset, rule, denoiser, "a cat")
    device_sites = {s: n for s, n in syncs.by_site.items() if not s.startswith(HOST_ONLY)}
    ours = {s: n for s, n in device_sites.items() if not s.startswith(OTHER_AREAS)}
    render_packs = preset.render.segments + 2 if strategy == "two_pass" else 2  # marching blocks, grad pass, shading
    assert sum(ours.values()) == render_packs, syncs.report()
    assert all("sdi/scene/" in s for s in ours) and syncs.by_kind["nonzero"] == render_packs, syncs.report()
    theirs = sum(device_sites.values()) - render_packs
    assert denoiser.calls > 1 and theirs == 1, syncs.report()  # AnnealedT's tau, whatever the number of UNet calls
    assert isinstance(info.losses["loss"], torch.Tensor) and math.isfinite(info.loss)  # read on demand


def test_sync_counter_counts_reads_by_site():
    x = torch.arange(6.0)
    with SyncCounter() as syncs:
        x.sum().item()
        bool(x.any())
        x[x > 2].tolist()
        torch.nonzero(x)
        x.sum().tolist()
    assert syncs.total == 6 and syncs.by_kind["bool-mask index"] == 1 and syncs.by_kind["nonzero"] == 1
    assert all("test_gpu_path.py" in site for site in syncs.by_site)
    x.sum().item()  # outside the context: the patches are gone
    assert syncs.total == 6
    with SyncCounter() as none:
        x + 1
    assert none.total == 0


def test_nan_is_found_a_few_steps_later_and_named_by_its_step(sd_prior, monkeypatch):
    import sdi.train.loop as loop

    preset = replace(paper_at_test_size(), steps=12, checkpoint_every=100)
    real = sd_prior.predict_eps
    calls = {"n": 0}

    def nan_from_step_3(x_t, t, prompts, cameras=None):
        eps = real(x_t, t, prompts, cameras)
        return eps * float("nan") if state.step >= 3 else eps

    monkeypatch.setattr(sd_prior, "predict_eps", nan_from_step_3)
    state = new_state(preset, seed=0)
    steps = loop.train(state, preset, preset.rule(), sd_prior, "a cat")
    with pytest.raises(loop.TrainingDiverged, match="at step 3$"):
        for info in steps:
            calls["n"] += 1
    assert calls["n"] == 9 and state.step == loop.SYNC_EVERY  # checked at step 10, no earlier read of the loss


# ------------------------------------------------------------------ shading chosen on the device


@pytest.mark.parametrize("mode", SHADING_MODES)
def test_one_hot_shading_mix_is_bit_identical_to_the_mode(mode):
    g = torch.Generator().manual_seed(0)
    albedo, normals = torch.rand(50, 3, generator=g), torch.nn.functional.normalize(torch.randn(50, 3, generator=g))
    points, lights = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) * 3
    mix = torch.zeros(3).index_fill(0, torch.tensor(SHADING_MODES.index(mode)), 1.0)
    assert torch.equal(shade(albedo, normals, points, lights, mix), shade(albedo, normals, points, lights, mode))


def test_sampled_shading_follows_the_preset_probabilities():
    preset = replace(FAST, shading=(("albedo", 0.2), ("lambertian", 0.3), ("textureless", 0.5)))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_shading(preset, g) for _ in range(4000)])
    assert (draws.sum(1) == 1).all()
    torch.testing.assert_close(draws.mean(0), torch.tensor([0.2, 0.3, 0.5]), atol=0.03, rtol=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):  # the same draw picks the mode the host-side loop picked
        u = torch.rand((), generator=g1).item()
        expected = "albedo" if u < 0.2 else "lambertian" if u < 0.5 else "textureless"
        assert SHADING_MODES[int(sample_shading(preset, g2).argmax())] == expected
    assert sample_shading(FAST, g) == "albedo"


# ------------------------------------------------------------------ two-pass rendering


class Slab(nn.Module):
    """An opaque slab z in [-0.2, 0.2] of density 300 (opaque in a few samples), grey; a parameter scales it."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def density(self, x):
        inside = torch.sigmoid((0.2 - x[:, 2].abs()) * 200)
        return self.gain * (300.0 * inside + 0.05)

    def forward(self, x):
        return FieldOutput(self.density(x), torch.full_like(x, 0.5) * self.gain)


def slab_rays(size=12):
    cameras = orbit_cameras(torch.tensor([10.0, -5.0]), torch.tensor([5.0, 170.0]), 2.0, 40.0, size)
    return cameras, cameras.positions * 1.2


def test_two_pass_renders_what_one_pass_does_with_fewer_gradient_evaluations():
    cameras, lights = slab_rays()
    outs, grads = {}, {}
    for strategy in ("single_pass", "two_pass"):
        field = Slab()
        outs[strategy] = out = render(field, SolidBackground(), cameras, 96, "lambertian", lights, perturb=False,
                                      normals="finite_difference", strategy=strategy, segments=4)
        (out.rgb.mean() + out.opacity.mean()).backward()
        grads[strategy] = field.gain.grad
    one, two = outs["single_pass"], outs["two_pass"]
    torch.testing.assert_close(two.rgb, one.rgb, atol=1e-4, rtol=0)  # only weights past T < 1e-4 differ
    torch.testing.assert_close(two.opacity, one.opacity, atol=1e-4, rtol=0)
    torch.testing.assert_close(grads["two_pass"], grads["single_pass"], atol=1e-4, rtol=1e-3)
    assert two.n_shaded == one.n_shaded and two.n_with_grad < 0.5 * one.n_with_grad  # behind the slab: no gradient
    no_stop = render(Slab(), SolidBackground(), cameras, 96, "lambertian", lights, perturb=False,
                     normals="finite_difference", strategy="two_pass", segments=1)
    density_pass = lambda o: o.n_evaluated - o.n_with_grad  # noqa: E731
    assert density_pass(two) < 0.6 * density_pass(no_stop)  # early ray termination after each block


def test_two_pass_skips_empty_space_like_one_pass():
    cameras, lights = slab_rays()
    field = Slab()
    occupancy = OccupancyGrid(resolution=16)
    occupancy.update(0, field.density, torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = render(field, SolidBackground(), cameras, 64, "albedo", None, occupancy=occupancy, perturb=False,
                     normals=None)
        two = render(field, SolidBackground(), cameras, 64, "albedo", None, occupancy=occupancy, perturb=False,
                     normals=None, strategy="two_pass")
    torch.testing.assert_close(two.rgb, one.rgb, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown render strategy"):
        render(field, SolidBackground(), cameras, 8, strategy="three_pass")


# ------------------------------------------------------------------ hash grid: fused backward, compile, tcnn


def test_fused_hash_encoding_matches_autograd_exactly():
    torch.manual_seed(0)
    enc = HashGridEncoding(HashGridFieldConfig(n_levels=5, log2_hashmap_size=9, base_resolution=4,
                                               per_level_scale=2.0))
    with torch.no_grad():
        enc.tables.normal_()
    x, g = torch.rand(300, 3), torch.randn(300, enc.out_dim)
    results = []
    for fused in (True, False):
        enc.fused, enc.tables.grad = fused, None
        out = enc(x)
        (out * g).sum().backward()
        results.append((out.detach(), enc.tables.grad.clone()))
    (out_f, grad_f), (out_r, grad_r) = results
    assert torch.equal(out_f, out_r)
    torch.testing.assert_close(grad_f, grad_r, atol=1e-6, rtol=1e-6)  # index_add vs index_put order
    enc.fused = True  # points that need a gradient (autograd normals) take the autograd path
    xg = x.clone().requires_grad_(True)
    (enc(xg) * g).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_hash_grid_field_compiles_without_graph_breaks():
    torch.manual_seed(0)
    field = compile_field(HashGridField(TINY_HASH), backend="eager")  # fullgraph=True: a graph break raises
    reference = HashGridField(TINY_HASH)
    reference.load_state_dict(field.state_dict())
    for n in (64, 97):  # dynamic shapes: the sample count changes every step
        x = torch.rand(n, 3) * 2 - 1
        out, ref = field(x), reference(x)
        torch.testing.assert_close(out.density, ref.density)
        torch.testing.assert_close(field.density(x), ref.density)
        out.density.sum().backward()
    assert all(p.grad is not None for p in field.parameters())


def test_tinycudann_fallback_is_said_once(monkeypatch):
    monkeypatch.setattr(fields, "_said_tcnn_fallback", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            HashGridField(replace(TINY_HASH, use_tcnn=True))
        HashGridField(TINY_HASH)  # not asked for: nothing to say
    said = [w for w in caught if issubclass(w.category, TcnnFallbackWarning)]
    assert len(said) == 1 and "use_tcnn=True" in str(said[0].message) and "pure-PyTorch" in str(said[0].message)


# ------------------------------------------------------------------ K views per step, antithetic pairs


def test_antithetic_cameras_come_in_pairs_180_degrees_apart():
    sampling = replace(SDI_PAPER.cameras, antithetic=True)
    cameras = sampling.sample(6, 8, torch.Generator().manual_seed(0))
    elevation, azimuth = cameras.elevation_azimuth().unbind(1)
    turn = torch.remainder(azimuth[3:] - azimuth[:3], 360.0)
    torch.testing.assert_close(turn, torch.full((3,), 180.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(elevation[3:], elevation[:3], atol=1e-4, rtol=0)
    torch.testing.assert_close(cameras.positions[3:].norm(dim=1), cameras.positions[:3].norm(dim=1))
    torch.testing.assert_close(cameras.fovy[3:], cameras.fovy[:3])
    assert (azimuth >= -180).all() and (azimuth <= 180).all()
    with pytest.raises(ValueError, match="must be even"):
        sampling.sample(3, 8, torch.Generator())
    uniform = CameraSampling().sample(6, 8, torch.Generator().manual_seed(0))  # unchanged stream without it
    assert uniform.c2w.shape == (6, 4, 4)


def test_views_per_step_divides_the_steps_and_says_so():
    k2 = with_views_per_step(SDI_PAPER, 2, antithetic=True)
    assert (k2.batch, k2.steps, k2.average_views, k2.cameras.antithetic) == (2, 5000, True, True)
    assert "2 antithetic views/step, 5000 steps = one-view budget / 2" in views_line(k2)
    assert views_line(SDI_PAPER) == "" and "uniform" in views_line(with_views_per_step(SDI_PAPER, 4))
    config = RunConfig("a cat", "sdi-paper", "sd:/weights", steps=300, views_per_step=3)
    assert (config.resolved_preset().steps, config.resolved_preset().batch) == (100, 3)
    for bad, message in [(dict(views_per_step=3, antithetic=True), "must be even"),
                         (dict(antithetic=True), "give --views-per-step"),
                         (dict(views_per_step=2, batch=2), "not both"), (dict(views_per_step=0), "at least 1")]:
        with pytest.raises(ValueError, match=message):
            RunConfig("a cat", "sdi-paper", "sd:/weights", **bad).resolved_preset()


def test_cli_flags_reach_the_preset():
    from sdi.cli.main import build_parser
    from sdi.cli.generate import config_from

    args = build_parser().parse_args(["generate", "a red cube", "--views-per-step", "2", "--antithetic"])
    preset = config_from(args, "a red cube", "fast").resolved_preset()
    assert (preset.batch, preset.steps, preset.cameras.antithetic) == (2, FAST.steps // 2, True)


def test_k_view_gradient_is_the_mean_of_the_one_view_gradients(sd_prior):
    """Two views in one step (one batched UNet call per guidance step) give the field the mean of the gradients
    that each view alone gives (with a rule whose kappa depends on each image only)."""
    preset = with_views_per_step(replace(FAST, radiance_field=TINY_HASH, resolution=16), 2)
    rule = Rule("deterministic", AnnealedT(0.6, 0.6, tau_max=0.0), Inversion(cfg=-7.5, steps=2))
    cameras, _ = slab_rays(16)
    field, background = HashGridField(TINY_HASH), SolidBackground()

    def gradient(views):
        field.zero_grad()
        out = render(field, background, views, 24, perturb=False, normals=None)
        latent = sd_prior.encode(out.rgb * 2 - 1)
        update = distill_step(rule, sd_prior, latent, 0, 10, "a cat", torch.Generator(), {}, views)
        views_loss(preset if len(views) > 1 else FAST, latent, update.target, update.loss_weight).backward()
        return [p.grad.clone() for p in field.parameters()]

    pair = gradient(cameras)
    singles = [gradient(Cameras(cameras.c2w[i:i + 1], cameras.fovy[i:i + 1], 16, 16)) for i in range(2)]
    for both, first, second in zip(pair, *singles):
        torch.testing.assert_close(both, (first + second) / 2, atol=1e-6, rtol=1e-4)
        assert both.abs().sum() > 0


def test_sync_counter_leaves_tensor_as_it_found_it():
    before = {name: name in vars(torch.Tensor) for name in ("__getitem__", "__bool__", "__index__", "item", "nonzero")}
    with SyncCounter():
        pass
    assert {name: name in vars(torch.Tensor) for name in before} == before
    assert torch.tensor([torch.tensor(1.0), torch.tensor(2.0)]).tolist() == [1.0, 2.0]  # 0-d tensors: no sequences


def test_forward_difference_normals_agree_with_central_ones_at_half_the_evaluations():
    from sdi.scene.renderer import normals_finite_difference, normals_forward_difference

    def ball(x):  # a smooth density, high inside radius 0.5
        return 100 * torch.sigmoid((0.5 - x.norm(dim=-1)) * 20)

    calls = []
    counted = lambda x: calls.append(len(x)) or ball(x)  # noqa: E731
    x = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1) * 0.5
    forward = normals_forward_difference(counted, x, ball(x))
    central = normals_finite_difference(counted, x)
    assert calls == [600, 1200]
    assert (forward * central).sum(-1).min() > 0.999  # within 2.6 degrees
    assert (forward * torch.nn.functional.normalize(x, dim=-1)).sum(-1).min() > 0.999  # the outward normal
    cameras, lights = slab_rays()
    out = render(Slab(), SolidBackground(), cameras, 48, "textureless", lights, normals="forward_difference")
    assert out.sample_normals.shape == (out.n_shaded, 3)


def test_views_grid_gives_every_variant_the_same_one_view_budget(tmp_path):
    from sdi.bench.suites import VIEW_VARIANTS, grid_views, job_views

    jobs = grid_views(tmp_path, ["a red cube", "an orange torus"], seeds=2, steps=40)
    assert len(jobs) == 2 * 2 * len(VIEW_VARIANTS) and {j.params_dict["steps"] for j in jobs} == {40}
    with pytest.raises(ValueError, match="unknown views variant"):
        grid_views(tmp_path, ["a red cube"], variants=("k3",))
    assert callable(job_views)  # where the runner imports job functions from
