"""`sdi generate` and `sdi 2d` drive a (tiny, random, offline) Stable Diffusion folder for 3 steps."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import sdi.train.run as run
from sdi.cli.main import main
from sdi.train.run import RunConfig, read_config
from tiny_sd import IMAGE_SIZE, build_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


def spy_on_prior(monkeypatch) -> dict:
    """Record the prior ``train_run`` loads and the shapes of the renders it encodes."""
    seen = {"renders": []}
    real = run.load_prior

    def load_and_spy(config, preset):
        prior = seen["prior"] = real(config, preset)
        encode = prior.encode
        prior.encode = lambda image: seen["renders"].append(tuple(image.shape)) or encode(image)
        return prior

    monkeypatch.setattr(run, "load_prior", load_and_spy)
    return seen


def test_generate_runs_three_steps_on_stable_diffusion_with_speed_options(tiny_sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen, out = spy_on_prior(monkeypatch), tmp_path / "run"
    code = main(["generate", "a DSLR photo of a hamburger", "--prior", f"sd:{tiny_sd_folder}", "--steps", "3",
                 "--resolution", "12", "--batch", "2", "--chunk", "100", "--vae-checkpointing", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["denoiser_calls"] >= 3 and metrics["device"] == "cpu"
    assert (out / "checkpoint.safetensors").exists() and (out / "turntable.mp4").exists()
    assert (out / "views.png").exists() and (out / "mesh.glb").exists()
    assert seen["renders"] == [(2, 3, 12, 12)] * 3  # two 12 x 12 views per step, resized to the model's 16 inside
    assert seen["prior"].options.gradient_checkpointing_vae and seen["prior"].vae.is_gradient_checkpointing
    resumed = read_config(out).resolved_preset()  # what --resume trains
    assert (resumed.batch, resumed.chunk, resumed.resolution) == (2, 100, 12)
    assert resumed.stable_diffusion.gradient_checkpointing_vae and not resumed.stable_diffusion.compile_unet


def test_compile_unet_reaches_the_prior_and_waits_for_cuda(tiny_sd_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = RunConfig("a cat", prior=f"sd:{tiny_sd_folder}", device="cpu", compile_unet=True)
    with pytest.warns(UserWarning, match="compile_unet only applies on CUDA"):
        prior = run.load_prior(config, config.resolved_preset())
    assert prior.options.compile_unet and not isinstance(prior.unet, torch._dynamo.eval_frame.OptimizedModule)


def test_device_cuda_without_cuda_is_one_line_error(tiny_sd_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["generate", "a cat", "--prior", f"sd:{tiny_sd_folder}", "--device", "cuda", "--steps", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--device cuda needs a CUDA GPU" in err and "--device cpu" in err
    assert not (tmp_path / "run").exists()


def test_2d_runs_three_steps_in_latent_space(tiny_sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "2d"
    code = main(["2d", "--prior", f"sd:{tiny_sd_folder}", "--prompt", "a cat", "--method", "sdi", "--steps", "3",
                 "--size", str(IMAGE_SIZE), "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sdi" and metrics["steps"] == 3
    with Image.open(out / "final.png") as image:
        assert image.size[0] >= IMAGE_SIZE


def test_missing_sd_folder_is_one_line_error(tmp_path, capsys):
    code = main(["2d", "--prior", f"sd:{tmp_path / 'nope'}", "--steps", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "sd" in err.lower()
