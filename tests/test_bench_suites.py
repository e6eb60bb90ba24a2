"""`sdi bench` suites end to end on tiny grids, and NFSD / CSD against their formulas."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_PROMPT, TINY_RESOLUTION
from sdi.bench import suites
from sdi.bench.runner import read_runs, write_runs
from sdi.cli.main import main
from sdi.data.builtin import builtin_images
from sdi.distill.csd import csd
from sdi.distill.nfsd import nfsd
from sdi.distill.rule import distill_step, weight
from sdi.distill.timesteps import RandomT
from sdi.priors.exemplar import ExemplarPrior



def test_2d_suite_via_cli_writes_csv_and_report(tmp_path):
    out = tmp_path / "b2d"
    argv = ["bench", "2d", "--out", str(out), "--seeds", "1", "--steps", "4", "--prompts", "checker",
            "--methods", "ddim", "sdi", "--prior", "exemplar", "--quiet"]
    assert main(argv) == 0
    rows = read_runs(out / "runs.csv")
    assert sorted(r["method"] for r in rows.values()) == ["ddim", "sdi"]
    assert all(r["status"] == "ok" for r in rows.values())
    sdi = next(r for r in rows.values() if r["method"] == "sdi")
    assert sdi["distance_to_ddim"] < 1e-4  # on whole exemplars, SDI on the DDIM grid retraces DDIM
    assert sdi["distance_to_prior"] < 1e-4  # ... and so lands on an exemplar
    report = (out / "report.md").read_text()
    assert "| sdi | 1 | 0 |" in report and "sdi bench 2d" in report and "Wall time" in report
    assert (out / "bar_distance_to_ddim.png").is_file()


def test_2d_suite_on_the_patch_prior_measures_blur_off_the_prior(tmp_path):
    jobs = suites.grid_2d(prompts=("stripes",), seeds=1, steps=6, methods=("ddim", "sds", "sdi-cached"), size=16)
    assert {job.params_dict["prior"] for job in jobs} == {"patches"}
    rows = {job.method: suites.job_2d(job) for job in jobs}  # in-process
    assert rows["ddim"]["distance_to_prior"] < 1e-3  # DDIM lands on a quilt of the class's tiles
    assert rows["sdi-cached"]["distance_to_ddim"] < 1e-5
    assert rows["sds"]["distance_to_prior"] > 0.01  # six SDS steps leave an average of tiles, not a quilt
    with pytest.raises(ValueError, match="unknown 2D prior"):
        suites.grid_2d(prior="gaussian")


def test_3d_suite_trains_and_scores_against_ground_truth(tmp_path, catalog_prior):
    jobs = suites.grid_3d(tmp_path / "runs", objects=(TINY_PROMPT,), seeds=1, steps=3, methods=("sds",),
                          resolution=TINY_RESOLUTION)
    rows = [{"status": "ok", "method": "sds", "prompt": TINY_PROMPT, **suites.job_3d(jobs[0])}]  # in-process
    for metric in ("psnr", "ssim", "mask_iou", "detail_ratio", "masked_detail_ratio", "saturation_error",
                   "peak_memory_mb", "train_s"):
        assert math.isfinite(rows[0][metric]), metric
    assert rows[0]["diverged"] in (0.0, 1.0) and rows[0]["denoiser_calls"] == 3
    assert (tmp_path / "runs" / jobs[0].key / "checkpoint.safetensors").is_file()
    path = suites.write_suite_report("3d", rows, tmp_path, "sdi bench 3d", 1.0, 1)
    assert "| sds | 1 | 0 |" in path.read_text() and "masked_detail_ratio" in path.read_text()
    with pytest.raises(ValueError):
        suites.grid_3d(tmp_path, objects=("a purple unicorn",))

    # benchmarks/rescore_3d.py: the same numbers again from the checkpoint, training columns kept.
    rescore = _load_script("rescore_3d")
    job, old = jobs[0], {k: v for k, v in rows[0].items() if k != "masked_detail_ratio"}
    write_runs(tmp_path / "runs.csv", [{**old, "key": job.key, "suite": "3d", "seed": 0, "params": job.params_json}])
    assert rescore.main([str(tmp_path)]) == 0
    again = read_runs(tmp_path / "runs.csv")[job.key]
    for metric in rescore.QUALITY:
        assert again[metric] == pytest.approx(rows[0][metric], rel=1e-6, abs=1e-9), metric
    assert again["train_s"] == rows[0]["train_s"]
    report = path.read_text()
    assert "## Re-scored" in report and "- psnr: max |new - old| = 0 over 1 runs" in report
    assert "masked_detail_ratio: not recorded before (new)" in report


def _load_script(name: str):
    """A module of benchmarks/ by file name (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fit_trains_an_unregistered_preset_through_train_run(tmp_path, catalog_prior):
    from sdi.distill.sds import sds
    from sdi.train.loop import new_state
    from sdi.train.run import RunConfig

    config = RunConfig(TINY_PROMPT, "fast", "embedded", 2, 0, TINY_RESOLUTION)
    preset = replace(config.resolved_preset(), rule=lambda: sds(cfg=3.0), num_samples=16, steps_per_target=1)
    scene, trained = suites.fit(tmp_path / "run", config, preset)
    assert trained["steps"] == 2 and trained["denoiser_calls"] == 2 and trained["train_s"] > 0
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["preset"]["rule"] == repr(sds(cfg=3.0)) and written["run"]["preset"] == "fast"
    initial = new_state(preset, config.seed).scene
    assert torch.isfinite(scene.field.grid).all() and not torch.equal(scene.field.grid, initial.field.grid)


def test_eq8_ablation_inversion_error_is_finite(catalog_prior):
    params = {"size": TINY_RESOLUTION, "views": 2, "t_values": [0.3, 0.7], "inv_cfg": -7.5, "fwd_cfg": 7.5}
    for name in ("ddim-inversion", "random-resampled"):
        job = suites.Job("eq8", name, TINY_PROMPT, 0, {**params, "estimator": name})
        out = suites.job_eq8(job)
        assert {"eq8_t0.30", "eq8_t0.70"} <= set(out)
        assert all(math.isfinite(out[k]) and out[k] >= 0 for k in ("eq8_t0.30", "eq8_t0.70"))
    jobs = suites.grid_ablations("runs", objects=(TINY_PROMPT,), eq8_objects=(TINY_PROMPT,))
    names = {j.method for j in jobs if j.suite == "ablation"}
    steps = {f"inv-steps {n}" for n in suites.INVERSION_STEPS}
    assert {"sdi", "cfg 0/0", "cfg 0/7.5", "cfg 7.5/7.5", "random-t", "sdi-reference"} | steps == names
    assert {j.method for j in jobs if j.suite == "eq8"} == set(suites.ESTIMATORS)


@pytest.fixture(scope="module")
def exemplar():
    return ExemplarPrior(*builtin_images(16, per_class=8))


def _step(rule, prior, seed=0):
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    update = distill_step(rule, prior, x0, 0, 10, "checker", torch.Generator().manual_seed(seed), {})
    t = torch.full((2,), update.levels.t)
    eps_c, eps_u, eps_s = prior.predict_eps(update.x_t, t, ["checker", "", "stripes"])
    w = weight(prior.alphas_cumprod[update.levels.t], rule.weighting)
    return update, w, eps_c, eps_u, eps_s


def test_csd_direction_is_the_classifier_score(exemplar):
    update, w, eps_c, eps_u, _ = _step(csd(scale=5.0), exemplar)
    assert torch.allclose(update.grad, w * 5.0 * (eps_c - eps_u), atol=1e-5)


def test_nfsd_direction_matches_its_formula(exemplar):
    s = 7.5
    for lo, hi in ((0.02, 0.15), (0.4, 0.9)):  # below and above t = 200
        for negative in ("", "stripes"):  # no negative prompt ("" -> delta_D = 0 above 200), and a real one
            rule = replace(nfsd(s, negative=negative), timesteps=RandomT(lo, hi))
            update, w, eps_c, eps_u, eps_s = _step(rule, exemplar)
            eps_neg = eps_u if negative == "" else eps_s
            delta_d = eps_u if update.levels.t < 200 else eps_u - eps_neg
            assert torch.allclose(update.grad, w * (delta_d + s * (eps_c - eps_u)), atol=1e-5)


def test_sd_suite_tiny_sd_and_tiny_clip(tmp_path):
    from test_bench import _tiny_clip_folder
    from tiny_sd import IMAGE_SIZE, build_tiny_sd

    assert len(suites.SD_PROMPTS) == 43
    sd, clip = build_tiny_sd(tmp_path / "sd"), _tiny_clip_folder(tmp_path / "clip")
    jobs = suites.grid_sd(tmp_path / "runs", str(sd), str(clip), prompts=suites.SD_PROMPTS[:1], methods=("sdi",),
                          views=2, eval_size=IMAGE_SIZE, steps=2, resolution=IMAGE_SIZE, num_samples=8, batch=1,
                          dense_grid=True)
    out = suites.job_sd(jobs[0])
    assert out["steps"] == 2 and out["denoiser_calls"] >= 2
    assert 0 <= out["clip_score"] <= 100 and all(0 <= out[f"iqa_{k}"] <= 100 for k in ("quality", "sharpness", "real"))
    with pytest.raises(FileNotFoundError, match="--sd"):
        suites.grid_sd(tmp_path, str(tmp_path / "missing"), str(clip))


def test_sdi_tracking_probe_scores_against_the_variants_at_one_camera():
    """benchmarks/sdi_tracking.py: a variant's own render is at distance 0 from itself; a few steps of each stepper
    run from grey and move the image."""
    tracking = _load_script("sdi_tracking")
    prior = tracking.CatalogPrior("a red cube with white stripes")
    camera = tracking.one_camera()
    flat, _ = prior.exemplars(camera, tracking.SIZE, tracking.SIZE)
    variants = flat[0, :len(prior.variants)].float()
    near, k, mean = tracking.distances(variants[3].reshape(1, 3, tracking.SIZE, tracking.SIZE), variants)
    assert (near, k) == (0.0, 3) and mean > 0.05
    for stepper in (tracking.Stepper("sgd", 0.3), tracking.Stepper("adam", 0.1, 2)):
        x = tracking.distill_image(tracking.RULES["sdi"](), prior, camera, stepper, seed=0, steps=3)
        assert x.shape == (1, 3, tracking.SIZE, tracking.SIZE) and torch.isfinite(x).all() and x.abs().max() > 0


def test_kappa_norm_probe_inverts_a_variant_to_a_far_smaller_noise_than_a_prior_sample():
    """benchmarks/kappa_norm.py: under the embedded prior a variant's render inverts to a noise several times
    smaller than one of the prior's own samples does, and the recording estimator hands kappa on unchanged."""
    probe = _load_script("kappa_norm")
    prior = probe.CatalogPrior("a red cube with white stripes", joint_views=True)
    cameras = probe.two_cameras()
    variant = probe.variant_renders(prior, cameras)[:, 0]
    sample = variant + prior.smoothing * torch.randn(variant.shape, generator=torch.Generator().manual_seed(1))
    small, typical = (probe.inversion_rms(prior, cameras, x, 500) for x in (variant, sample))
    assert small < typical / 4 and 0.5 < typical < 1.0
    inner = probe.Inversion(cfg=-7.5)
    recording = probe.Recording(inner)
    rule = replace(probe.sdi_paper(), noise=recording)
    update = probe.distill_update(rule, prior, variant, probe.Levels(500, 500), prior.target.prompt,
                                  torch.Generator().manual_seed(0), {}, cameras)
    assert recording.seen == [(500, pytest.approx(small))]
    assert probe.rms(update.noise.kappa) == pytest.approx(small)


def test_kappa_norm_lean_gain_is_one_for_the_image_itself_and_sds_repels_the_cubes_blur():
    """lean_gain: the image itself leans 1, the mean 0, twice the lean 2. On the cube, SDS's target, averaged over
    noises, leans further than the image (the blur repels it), as the committed part 3 reports (~20x)."""
    probe = _load_script("kappa_norm")
    mean, direction = torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    image = mean + 0.05 * direction
    gains = [probe.lean_gain(x, mean, direction, 0.05) for x in (image, mean, mean + 0.1 * direction)]
    assert gains == pytest.approx([1.0, 0.0, 2.0])
    sdi_paper, sdi_fine, sds = probe.blur_gains("a red cube with white stripes", 400)
    assert sds > 2 and all(math.isfinite(g) for g in (sdi_paper, sdi_fine))


def test_modes_report_counts_the_runs_that_clear_the_main_job_bar():
    """PSNR >= 24 and mask IoU >= 0.93, both: of (25, 0.95), (23, 0.99), (30, 0.92) only the first clears it."""
    from sdi.bench import modes

    base = {"status": "ok", "method": "sdi", "prompt": "p", **dict.fromkeys(modes.METRICS, 0.5)}
    rows = [{**base, "psnr": psnr, "mask_iou": iou} for psnr, iou in ((25.0, 0.95), (23.0, 0.99), (30.0, 0.92))]
    report = modes.modes_report(rows, "cmd", 1.0, 1)
    assert "| p | 26.0 / 0.953, 1 of 3 |" in report and "| all | 26.0 / 0.953, 1 of 3 |" in report


def test_modes_grid_passes_steps_per_target_to_every_method_and_says_so(tmp_path):
    """By default each method takes its own preset's Adam steps per target (fast's 3 for SDI, 1 for SDS: its job
    keys are those made before); --steps-per-target K reaches every method's preset and the report says so; SDI's
    jobs name fast's inversion steps, so no run of a former fast is resumed as today's."""
    from sdi.bench import modes
    from sdi.train.presets import FAST, FAST_INVERSION_STEPS, FAST_TAU_MAX

    cube = ("a red cube with white stripes",)
    plain = {j.method: j for j in modes.grid_modes(tmp_path, objects=cube, seeds=1, steps=6)}
    five = modes.grid_modes(tmp_path, objects=cube, seeds=1, steps=6, steps_per_target=5)
    assert "steps_per_target" not in plain["sds"].params_dict and "inversion_steps" not in plain["sds"].params_dict
    assert plain["sdi"].params_dict["steps_per_target"] == FAST.steps_per_target == 3
    assert plain["sdi"].params_dict["inversion_steps"] == FAST_INVERSION_STEPS
    assert plain["sdi"].params_dict["tau_max"] == FAST_TAU_MAX == FAST.rule().timesteps.tau_max
    assert all(j.params_dict["steps_per_target"] == 5 for j in five)
    assert {j.key for j in plain.values()}.isdisjoint(j.key for j in five)
    assert all(modes.mode_preset(m, 6, 5).steps_per_target == 5 for m in modes.MODE_METHODS)
    assert [modes.mode_preset(m, 6).steps_per_target for m in modes.MODE_METHODS] == [3, 1, 1]
    rows = [{"status": "ok", "method": "sdi", "prompt": "p", **dict.fromkeys(modes.METRICS, 0.5)}]
    assert "not the main job" in modes.modes_report(rows, "cmd", 1.0, 1, steps_per_target=5)
    assert "are the main job" in modes.modes_report(rows, "cmd", 1.0, 1)


def test_modes_grid_runs_on_fasts_multi_view_prior_unless_told_single_view_and_says_so(tmp_path):
    """By default every job loads fast's multi-view prior; --single-view reaches the prior of every method, and its
    job keys are those made before fast took the multi-view prior (params without joint_views)."""
    from sdi.bench import modes
    from sdi.train.presets import FAST
    from sdi.train.run import RunConfig, load_prior

    cube = ("a red cube with white stripes",)
    joint = modes.grid_modes(tmp_path, objects=cube, seeds=1, steps=6)
    single = modes.grid_modes(tmp_path, objects=cube, seeds=1, steps=6, joint_views=False)
    assert all(j.params_dict["joint_views"] for j in joint) and all("joint_views" not in j.params_dict for j in single)
    assert {j.key for j in single}.isdisjoint(j.key for j in joint)
    assert FAST.joint_views and load_prior(RunConfig(cube[0], "fast", "embedded", 6, 0), FAST).joint_views
    for m in modes.MODE_METHODS:
        assert load_prior(RunConfig(cube[0], "fast", "embedded", 6, 0), modes.mode_preset(m, 6)).joint_views
        preset = modes.mode_preset(m, 6, joint_views=False)
        assert not load_prior(RunConfig(cube[0], "fast", "embedded", 6, 0), preset).joint_views
    assert modes.mode_preset("sdi", FAST.steps) == replace(FAST, name="sdi")  # the sdi rows are the main job
    rows = [{"status": "ok", "method": "sdi", "prompt": "p", **dict.fromkeys(modes.METRICS, 0.5)}]
    assert "single-view" in modes.modes_report(rows, "cmd", 1.0, 1, joint_views=False)
    assert "not the main job" in modes.modes_report(rows, "cmd", 1.0, 1, joint_views=False)
    assert "are the main job" in modes.modes_report(rows, "cmd", 1.0, 1)


def test_modes_table_trains_each_method_and_reports_mode_or_mean(tmp_path):
    from sdi.bench import modes

    jobs = modes.grid_modes(tmp_path / "runs", objects=("a red cube with white stripes",), seeds=1, steps=2)
    assert [j.method for j in jobs] == list(modes.MODE_METHODS)
    assert repr(modes.mode_preset("sds-threestudio", 2).rule()).count("7.5") >= 1  # CFG 7.5, not threestudio's 100
    rows = [{"status": "ok", "method": j.method, "prompt": j.prompt, **modes.job_modes(j)} for j in jobs]
    for row in rows:
        assert row["variant"] in range(16) and row["rms_to_nearest"] > 0 and row["rms_to_mean"] > 0
        assert all(math.isfinite(row[m]) for m in modes.METRICS)
    report = modes.modes_report(rows, "python benchmarks/bench_modes.py --steps 2", 1.0, 1)
    assert "| sdi | 1 |" in report and "SDI / sds masked detail" in report and "bench_modes.py" in report
    with pytest.raises(ValueError, match="unknown method"):
        modes.grid_modes(tmp_path, methods=("vsd",))


def test_main_job_benchmark_reads_a_runs_figures_and_compares_checkpoints(tmp_path):
    """benchmarks/main_job.py: `sdi generate` in fresh processes at 1 and 2 threads, its summary line and resource
    usage read back; the two checkpoints are bit-identical, and a checkpoint with one value changed is not."""
    from safetensors.torch import load_file, save_file

    bench = _load_script("main_job")
    src = Path(bench.__file__).resolve().parents[1] / "src"
    extra = ["--steps", "2", "--resolution", str(TINY_RESOLUTION)]
    rows = [bench.run_once(src, n, TINY_PROMPT, tmp_path / f"run{n}", extra) for n in (1, 2)]
    for row in rows:
        assert 0 < row["train"] < row["wall"] and row["s_per_step"] == pytest.approx(row["train"] / 2)
        assert row["user"] > 0 and row["minor_faults"] > 0 and row["peak_rss_mb"] > 50
    assert bench.same_checkpoints(tmp_path / "run1", tmp_path / "run2")
    tensors = load_file(str(tmp_path / "run1" / "checkpoint.safetensors"))
    tensors["modules/field/grid"].view(-1)[0] += 1e-6
    (tmp_path / "changed").mkdir()
    save_file(tensors, str(tmp_path / "changed" / "checkpoint.safetensors"))
    assert not bench.same_checkpoints(tmp_path / "run1", tmp_path / "changed")
