"""Training: every preset runs on CPU, runs are deterministic and resume exactly, checkpoints survive
crashes and NaNs, and a tiny run's exports load."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import imageio.v2 as imageio
import pytest
import torch
import trimesh
from PIL import Image

import sdi.io
import sdi.train.loop as loop
from helpers import Killed, checkpoint_after, kill_at, train_to_the_end
from sdi.diffusion.denoiser import CountingDenoiser
from sdi.train.checkpoint import load_checkpoint, save_checkpoint
from sdi.train.loop import TrainingDiverged, new_state, train, training_step
from sdi.train.presets import FAST, PRESETS, SDI_PAPER, cpu_sized, gpu_sized
from sdi.train.run import CHECKPOINT, CONFIG, RunConfig, restore_state, run_device, save_state, train_run

TINY_PROMPT, TINY_RESOLUTION = "a red cube", 16  # as in conftest.py


def tiny(preset, steps: int = 3, **overrides):
    """``preset`` at CPU test sizes (GPU presets shrunk with cpu_sized first, as `sdi generate` does)."""
    if gpu_sized(preset):
        preset = cpu_sized(preset)
    return replace(preset, resolution=TINY_RESOLUTION, num_samples=16, batch=1, steps=steps, **overrides)


def params(state) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (state.scene.field, state.scene.background) for p in m.parameters()]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_a_few_steps_on_cpu(catalog_prior, name):
    preset = tiny(PRESETS[name])
    state = new_state(preset, seed=0)
    before = params(state)
    denoiser = CountingDenoiser(catalog_prior)
    infos = list(train(state, preset, preset.rule(), denoiser, TINY_PROMPT))
    assert [i.step for i in infos] == [1, 2, 3] and state.step == 3
    assert all(math.isfinite(i.loss) and math.isfinite(i.distill) for i in infos)
    assert all(0 <= i.t < 1000 for i in infos)
    assert denoiser.calls >= -(-3 // preset.steps_per_target)  # at least one call per target
    after = params(state)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "no parameter moved"


def test_gpu_presets_shrink_to_cpu_sizes_on_the_embedded_prior():
    for name in ("sdi-paper", "sdi-reference", "sds-threestudio"):
        preset = RunConfig(TINY_PROMPT, name).resolved_preset()
        assert preset.name == name and preset.resolution == FAST.resolution and preset.steps == FAST.steps
        assert preset.rule() == PRESETS[name].rule()
    assert RunConfig(TINY_PROMPT, "fast", steps=7, resolution=24).resolved_preset().resolution == 24
    with pytest.raises(ValueError, match="--steps"):
        RunConfig(TINY_PROMPT, "fast", steps=0).resolved_preset()
    with pytest.raises(ValueError, match="--resolution"):
        RunConfig(TINY_PROMPT, "fast", resolution=2).resolved_preset()


def test_speed_options_override_the_preset_and_keep_the_rest():
    sd = "sd:/weights"
    config = RunConfig(TINY_PROMPT, "sdi-paper", sd, batch=2, chunk=4096, gradient_checkpointing_vae=True,
                       compile_unet=True)
    preset = config.resolved_preset()
    assert (preset.batch, preset.chunk, preset.resolution, preset.steps) == (2, 4096, 512, SDI_PAPER.steps)
    options = preset.stable_diffusion
    assert options.gradient_checkpointing_vae and options.compile_unet
    assert options.view_dependent_prompts and options.resize_to_model  # the preset's own choices stay
    assert RunConfig(TINY_PROMPT, "sdi-paper", sd).resolved_preset() == SDI_PAPER
    for name in ("batch", "chunk"):
        with pytest.raises(ValueError, match=f"--{name} must be at least 1"):
            RunConfig(TINY_PROMPT, **{name: 0}).resolved_preset()


def test_run_device_defaults_and_one_line_errors(monkeypatch):
    sd = "sd:/weights"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device(RunConfig(TINY_PROMPT)) == run_device(RunConfig(TINY_PROMPT, prior=sd)) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda needs a CUDA GPU.*use --device cpu"):
        run_device(RunConfig(TINY_PROMPT, prior=sd, device="cuda"))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        run_device(RunConfig(TINY_PROMPT, prior=sd, device="gpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert run_device(RunConfig(TINY_PROMPT, prior=sd)) == torch.device("cuda")
    assert run_device(RunConfig(TINY_PROMPT)) == torch.device("cpu")  # the embedded prior stays on the CPU
    with pytest.raises(ValueError, match="embedded prior runs on the CPU only"):
        run_device(RunConfig(TINY_PROMPT, device="cuda"))
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        run_device(RunConfig(TINY_PROMPT, prior=sd, device="cuda:1"))


def test_chunked_render_gives_the_same_training_step(catalog_prior, monkeypatch):
    renders = []
    real = loop.render

    def record(*args, **kwargs):
        renders.append((kwargs["chunk"], real(*args, **kwargs)))
        return renders[-1][1]

    monkeypatch.setattr(loop, "render", record)
    states = []
    for chunk in (None, 37):  # 37 does not divide the 16 x 16 rays: the last chunk is partial
        preset = tiny(FAST, steps=1, chunk=chunk)
        states.append(new_state(preset, seed=0))
        training_step(states[-1], preset, preset.rule(), catalog_prior, TINY_PROMPT)
    (none, full), (chunk, chunked) = renders
    assert none is None and chunk == 37
    torch.testing.assert_close(chunked.rgb, full.rgb)
    torch.testing.assert_close(chunked.opacity, full.opacity)
    for a, b in zip(params(states[0]), params(states[1])):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ runs: determinism and resume


def checkpoint_tensors(run_dir):
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    return tensors, meta


def assert_same_checkpoint(a, b):
    (ta, ma), (tb, mb) = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ma["step"] == mb["step"]
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optimizers/adam/") for k in ta) and "rng/generator" in ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key} differs"
    assert ma["optimizers"] == mb["optimizers"]


def test_random_background_recomposites_the_render_and_tells_the_prior(tiny_preset):
    """Each view is composited over a random colour with probability ``random_background`` (drawn after the render,
    so the render itself is the white one's), and the cameras carry the colours to the prior."""
    plain, coloured = (replace(tiny_preset, batch=8, random_background=p) for p in (0.0, 0.5))
    cameras0, out0 = loop.render_step(new_state(plain, 0), plain)
    cameras, out = loop.render_step(new_state(coloured, 0), coloured)
    assert cameras0.background is None and cameras.background.shape == (8, 3)
    white = (cameras.background == 1).all(1)
    assert 0 < int(white.sum()) < 8  # some views keep the white background, the others got a colour
    torch.testing.assert_close(out.rgb, out0.rgb + (1 - out0.opacity) * (cameras.background[:, :, None, None] - 1))
    torch.testing.assert_close(out.opacity, out0.opacity)
    with pytest.raises(ValueError, match="background"):
        replace(cameras, background=torch.ones(3))


def test_each_target_is_pulled_towards_for_steps_per_target_steps_at_the_same_cameras(catalog_prior, monkeypatch):
    """With steps_per_target 3, steps 0 and 3 call the prior and make a target; steps 1-2 and 4-5 re-render the
    same cameras (over the same background colours) and their loss is the distillation loss towards that target."""
    from sdi.distill.rule import distillation_loss

    cameras = []
    real = loop.render

    def record(field, background, views, *args, **kwargs):
        cameras.append(views.c2w.clone())
        return real(field, background, views, *args, **kwargs)

    monkeypatch.setattr(loop, "render", record)
    preset = replace(tiny(FAST, steps=6, random_background=1.0, steps_per_target=3), batch=2)
    denoiser = CountingDenoiser(catalog_prior)
    state, calls, infos = new_state(preset, seed=0), [], []
    for info in train(state, preset, preset.rule(), denoiser, TINY_PROMPT):
        calls.append(denoiser.calls)
        infos.append(info)
    assert calls[0] > 0 and calls[0] == calls[1] == calls[2] < calls[3] == calls[4] == calls[5]
    assert len(cameras) == 6 and not torch.equal(cameras[0], cameras[3])
    for first in (0, 3):
        for held in (first + 1, first + 2):
            assert torch.equal(cameras[held], cameras[first]) and torch.equal(infos[held].target, infos[first].target)
            assert infos[held].t == infos[first].t
            corner = (..., 0, 0)  # background: the same random colour as the target's render
            torch.testing.assert_close(infos[held].render[corner], infos[first].render[corner], atol=1e-3, rtol=0)
            expected = distillation_loss(infos[held].render * 2 - 1, infos[first].target)
            torch.testing.assert_close(infos[held].losses["distill"], expected)
    assert not torch.equal(infos[0].target, infos[3].target)
    with pytest.raises(ValueError, match="steps_per_target must be at least 1"):
        replace(FAST, steps_per_target=0)


def test_same_seed_same_run(tmp_path, tiny_preset):
    config = RunConfig(TINY_PROMPT, "tiny", seed=3)
    first = train_run(tmp_path / "a", config, progress=False)
    second = train_run(tmp_path / "b", config, progress=False)
    assert first["final_loss"] == second["final_loss"] and first["steps"] == 6
    assert first["denoiser_calls"] == second["denoiser_calls"] > 0
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")
    other = train_run(tmp_path / "c", replace(config, seed=4), progress=False)
    assert other["final_loss"] != first["final_loss"]


def test_killed_run_resumes_to_the_same_parameters(tmp_path, tiny_preset, monkeypatch):
    config = RunConfig(TINY_PROMPT, "tiny", seed=1)
    train_run(tmp_path / "whole", config, progress=False)

    with monkeypatch.context() as m:
        kill_at(m, 3)  # steps 0-2 done, checkpoint at step 2, step 3 never finishes
        with pytest.raises(Killed):
            train_run(tmp_path / "killed", config, progress=False)
    assert checkpoint_tensors(tmp_path / "killed")[1]["step"] == 2

    metrics = train_run(tmp_path / "killed", config, resume=True, progress=False)
    assert metrics["steps"] == 6
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "killed")


@pytest.mark.parametrize("steps_per_target", [1, 3])
def test_resume_by_driving_the_generator(tmp_path, tiny_preset, catalog_prior, steps_per_target):
    """Stop the ``train`` generator after k steps, pack/restore through a checkpoint, continue (with 3 steps per
    target, step 4 is inside the second target: the checkpoint keeps it)."""
    preset = replace(tiny_preset, steps_per_target=steps_per_target)
    whole = train_to_the_end(new_state(preset, seed=2), preset, catalog_prior, TINY_PROMPT)
    checkpoint_after(tmp_path, preset, catalog_prior, TINY_PROMPT, seed=2, steps=4)
    resumed, extra = restore_state(tmp_path, preset, seed=99, device="cpu")  # the seed does not matter: the
    assert resumed.step == 4 and extra["config"]["seed"] == 2  # generator is restored; tensors mapped to the CPU
    assert resumed.scene.device == torch.device("cpu") and resumed.generator.device == torch.device("cpu")
    train_to_the_end(resumed, preset, catalog_prior, TINY_PROMPT)
    for a, b in zip(params(whole), params(resumed)):
        assert torch.equal(a, b)
    assert torch.equal(whole.generator.get_state(), resumed.generator.get_state())


def test_generator_saved_on_cuda_is_reseeded_deterministically_on_cpu(tmp_path, tiny_preset):
    """A CUDA generator's state cannot drive a CPU generator: resuming there reseeds it from the saved state."""
    state = new_state(tiny_preset, seed=0)
    save_state(tmp_path, state, RunConfig(TINY_PROMPT, "tiny"), 0.0, 0)
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["generator_device"] == "cpu"
    tensors["rng/generator"] = torch.arange(16, dtype=torch.uint8)  # a CUDA (Philox) state: seed and offset
    save_checkpoint(tmp_path / CHECKPOINT, tensors, {**meta, "generator_device": "cuda"})
    first, second = (restore_state(tmp_path, tiny_preset, seed=0, device="cpu")[0] for _ in range(2))
    assert torch.equal(first.generator.get_state(), second.generator.get_state())
    assert not torch.equal(first.generator.get_state(), state.generator.get_state())
    assert all(torch.equal(a, b) for a, b in zip(params(first), params(state)))


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_preset, monkeypatch):
    config = RunConfig(TINY_PROMPT, "tiny", seed=0)
    real_fsync, saves = sdi.io._fsync_file, []

    def fsync_then_crash(path):
        if path.name.startswith(f".{CHECKPOINT.split('.')[0]}"):
            saves.append(path)
            if len(saves) == 2:  # the second checkpoint (step 4) dies half-way through its write
                path.write_bytes(path.read_bytes()[:100])
                raise OSError("no space left on device")
        real_fsync(path)

    monkeypatch.setattr(sdi.io, "_fsync_file", fsync_then_crash)
    with pytest.raises(OSError, match="no space"):
        train_run(tmp_path, config, progress=False)
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["step"] == 2 and len(saves) == 2
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name], "temporary file left behind"


class NaNAfter:
    """The embedded prior, returning NaN from the training step ``bad_step`` on (steps counted by encode)."""

    def __init__(self, inner, bad_step: int):
        self.inner, self.bad_step, self.step = inner, bad_step, -1
        self.alphas_cumprod = inner.alphas_cumprod

    def encode(self, image):
        self.step += 1
        return self.inner.encode(image)

    def decode(self, latent):
        return self.inner.decode(latent)

    def predict_eps(self, x_t, t, prompts, cameras=None):
        eps = self.inner.predict_eps(x_t, t, prompts, cameras)
        return torch.full_like(eps, float("nan")) if self.step >= self.bad_step else eps


@pytest.mark.parametrize("bad_step", [2, 0])
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, tiny_preset, monkeypatch, bad_step):
    import sdi.train.run as run

    real = run.load_prior
    monkeypatch.setattr(run, "load_prior", lambda config, preset: NaNAfter(real(config, preset), bad_step))
    with pytest.raises(TrainingDiverged) as error:
        train_run(tmp_path, RunConfig(TINY_PROMPT, "tiny"), progress=False)
    message = str(error.value)
    assert "\n" not in message and f"step {bad_step}" in message and "nan" in message
    if bad_step == 0:
        assert "no checkpoint" in message and not (tmp_path / CHECKPOINT).exists()
        return
    assert str(tmp_path / CHECKPOINT) in message
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["step"] == 2
    fields = [v for k, v in tensors.items() if k.startswith("modules/field/") and v.is_floating_point()]
    assert fields and all(torch.isfinite(v).all() for v in fields)


# ---------------------------------------------------------------------------------------- exports


def test_exports_of_a_tiny_run_load(generated_run):
    run_dir, status, _ = generated_run
    assert status == 0
    for suffix in ("glb", "obj", "ply"):
        mesh = trimesh.load(run_dir / f"mesh.{suffix}", force="mesh")
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    reader = imageio.get_reader(run_dir / "turntable.mp4")
    frames = [frame for frame in reader]  # not list(reader): its len() is inf for ffmpeg streams
    reader.close()
    assert len(frames) == 36 and frames[0].ndim == 3 and frames[0].shape[2] == 3
    with Image.open(run_dir / "turntable.gif") as gif:
        assert gif.n_frames == 36
    with Image.open(run_dir / "views.png") as views:
        views.load()
        assert views.width > views.height > 0  # 8 views wide, 3 rows (rgb, normals, opacity)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["denoiser_calls"] > 0 and metrics["wall_time_s"] > 0
    assert math.isfinite(metrics["final_loss"])
    assert metrics["peak_memory_mb"] > 0  # reported for every run (CUDA allocations or resident set)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["resolution"] == TINY_RESOLUTION and config["preset"]["resolution"] == TINY_RESOLUTION


def test_resume_refuses_a_run_started_on_another_version_of_its_preset(tmp_path, tiny_preset, monkeypatch):
    """A run begun before ``fast`` took the multi-view prior records no ``joint_views``: resuming it on today's
    preset would switch priors mid-run, so it is refused in one line; a matching record resumes."""
    from sdi.distill.sdi import sdi_paper
    from sdi.train.checkpoint import CheckpointError

    tiny_preset = replace(tiny_preset, rule=lambda: sdi_paper())  # the paper's int(10 t): a function in the repr
    monkeypatch.setitem(PRESETS, "tiny", tiny_preset)
    config = RunConfig(TINY_PROMPT, "tiny", seed=1)
    with monkeypatch.context() as m:
        kill_at(m, 3)
        with pytest.raises(Killed):
            train_run(tmp_path, config, progress=False)
    recorded = json.loads((tmp_path / CONFIG).read_text())
    assert recorded["preset"]["joint_views"] is True and "at 0x" in recorded["preset"]["rule"]
    del recorded["preset"]["joint_views"]  # as written before the field existed
    recorded["preset"]["rule"] = re.sub(r" at 0x[0-9a-f]+", " at 0xdead", recorded["preset"]["rule"])  # another process
    (tmp_path / CONFIG).write_text(json.dumps(recorded))
    with pytest.raises(CheckpointError, match=r"another 'tiny' preset .*differs in joint_views.*--overwrite"):
        train_run(tmp_path, config, resume=True, progress=False)
    with monkeypatch.context() as m:  # the preset as that version had it: resumes
        m.setitem(PRESETS, "tiny", replace(tiny_preset, joint_views=False))
        assert train_run(tmp_path, config, resume=True, progress=False)["steps"] == 6
