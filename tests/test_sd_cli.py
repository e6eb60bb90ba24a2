"""`sdi generate` and `sdi 2d` drive a (tiny, random, offline) Stable Diffusion folder for 3 steps."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sdi.cli.main import main
from tiny_sd import IMAGE_SIZE, build_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


def test_generate_runs_three_steps_on_stable_diffusion(tiny_sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    code = main(["generate", "a DSLR photo of a hamburger", "--prior", f"sd:{tiny_sd_folder}", "--steps", "3",
                 "--resolution", str(IMAGE_SIZE), "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["denoiser_calls"] >= 3
    assert (out / "checkpoint.safetensors").exists() and (out / "turntable.mp4").exists()


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
