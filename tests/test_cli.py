"""The `sdi` command in-process: one-line errors with exit status 2, and what each subcommand writes."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from helpers import error_line
from sdi.cli.main import main
from sdi.scene.catalog import vocabulary

TINY_PROMPT = "a red cube"  # as in conftest.py


def argparse_error(capsys, argv) -> str:
    """An argument argparse refuses: the same one line, ending with where to read the usage."""
    line = error_line(capsys, argv)
    assert line.endswith(f"see `sdi {argv[0]} --help`")
    return line


# ---------------------------------------------------------------------------------------------- 2d

TWOD = ["2d", "--size", "16", "--quiet"]


def test_2d_unknown_method_is_an_argparse_error(capsys):
    err = argparse_error(capsys, [*TWOD, "--method", "magic"])
    assert "invalid choice: 'magic'" in err and "sdi-cached" in err


def test_2d_unknown_label_lists_the_labels(capsys, tmp_path):
    line = error_line(capsys, [*TWOD, "--prompt", "zebra", "--out", str(tmp_path / "o")])
    assert "zebra" in line and all(label in line for label in ("stripes", "checker", "rings", "dots", "bricks"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("steps", ["0", "-3", "1"])
def test_2d_rejects_too_few_steps(capsys, tmp_path, steps):
    line = error_line(capsys, [*TWOD, "--steps", steps, "--out", str(tmp_path / "o")])
    assert "--steps" in line and steps in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_2d_rejects_an_empty_prompt(capsys, tmp_path, prompt):
    assert "empty --prompt" in error_line(capsys, [*TWOD, "--prompt", prompt, "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("args, words", [(["--prior", "gaussian"], ["gaussian", "patches", "exemplar", "sd:PATH"]),
                                         (["--patch", "5"], ["patch size 5", "16x16"])])
def test_2d_bad_prior_or_patch_size(capsys, tmp_path, args, words):
    line = error_line(capsys, [*TWOD, *args, "--out", str(tmp_path / "o")])
    assert all(word in line for word in words), line
    assert not (tmp_path / "o").exists()


def test_2d_images_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = error_line(capsys, [*TWOD, "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert "no PNG/JPG images" in line and str(tmp_path / "empty") in line


def test_2d_images_missing_folder(capsys, tmp_path):
    assert "not found" in error_line(capsys, [*TWOD, "--images", str(tmp_path / "nowhere")])


def test_2d_images_unreadable_png(capsys, tmp_path):
    folder = tmp_path / "imgs" / "cats"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    line = error_line(capsys, [*TWOD, "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")])
    assert "broken.png" in line and "cannot decode" in line


def test_2d_sdi_writes_images_and_metrics(capsys, tmp_path):
    out = tmp_path / "sdi"
    assert main([*TWOD, "--method", "sdi", "--steps", "5", "--seed", "2", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out / "final.png") as final, Image.open(out / "strip.png") as strip:
        assert final.size == (64, 64)  # 16 px, shown at 4x
        assert strip.width > strip.height > 0  # one snapshot per step at 5 steps
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sdi" and metrics["seed"] == 2 and metrics["steps"] == 5
    assert metrics["denoiser_calls"] > 4 and metrics["wall_time_s"] > 0
    assert metrics["eq8_residual"] >= 0 and metrics["distance_to_ddim"] >= 0


def test_2d_all_writes_a_comparison(capsys, tmp_path):
    from sdi.twod import ALL_METHODS

    out = tmp_path / "all"
    assert main([*TWOD, "--method", "all", "--steps", "3", "--out", str(out)]) == 0
    with Image.open(out / "comparison.png") as comparison:
        assert comparison.width > comparison.height
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(ALL_METHODS)
    assert metrics["ddim"]["distance_to_ddim"] == 0.0
    assert metrics["sdi-cached"]["distance_to_ddim"] < 1e-5  # cached kappa is DDIM (test_distill.py)
    assert metrics["ddim"]["distance_to_prior"] < 1e-3  # the default patch prior's DDIM sample is one of its quilts
    for method in ALL_METHODS:
        assert (out / method / "final.png").is_file() and (out / method / "metrics.json").is_file()
    printed = capsys.readouterr().out
    assert all(method in printed for method in ALL_METHODS)


# ---------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("prompt", ["", "  "])
def test_generate_rejects_an_empty_prompt(capsys, prompt):
    assert "empty prompt" in error_line(capsys, ["generate", prompt, "--quiet"])


def test_generate_without_a_prompt(capsys):
    assert "empty prompt" in error_line(capsys, ["generate", "--quiet"])


def test_generate_unknown_word_lists_the_vocabulary(capsys, tmp_path):
    line = error_line(capsys, ["generate", "a purple elephant", "--out", str(tmp_path / "run"), "--quiet"])
    assert "elephant" in line
    assert "cube" in line and "sphere" in line
    assert not (tmp_path / "run").exists()


def test_generate_unknown_preset(capsys):
    err = argparse_error(capsys, ["generate", TINY_PROMPT, "--preset", "turbo"])
    assert "invalid choice: 'turbo'" in err and "sdi-paper" in err


def test_generate_method_and_preset_together(capsys):
    assert "not both" in error_line(capsys, ["generate", TINY_PROMPT, "--method", "sds", "--preset", "fast"])


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--resolution", "4")])
def test_generate_rejects_bad_sizes(capsys, tmp_path, flag, value):
    line = error_line(capsys, ["generate", TINY_PROMPT, flag, value, "--out", str(tmp_path / "run"), "--quiet"])
    assert flag in line
    assert not (tmp_path / "run").exists()


def test_generate_resume_missing_folder(capsys, tmp_path):
    line = error_line(capsys, ["generate", "--resume", str(tmp_path / "gone"), "--quiet"])
    assert "config.json" in line and "not found" in line


@pytest.mark.parametrize("text", ["{not json", '{"run": {"prompt": "a red cube", "colour": 1}}', "[]"])
def test_generate_resume_bad_config(capsys, tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    line = error_line(capsys, ["generate", "--resume", str(tmp_path), "--quiet"])
    assert "not a run config" in line and str(tmp_path / "config.json") in line


def test_generate_resume_corrupt_checkpoint(capsys, tmp_path, generated_run):
    run_dir = tmp_path / "run"
    shutil.copytree(generated_run[0], run_dir)
    checkpoint = run_dir / "checkpoint.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    line = error_line(capsys, ["generate", "--resume", str(run_dir), "--quiet"])
    assert "corrupt" in line and str(checkpoint) in line
    assert "no earlier checkpoint is kept" in line  # a 3-step run checkpoints once: nothing before it
    assert checkpoint.read_bytes() == bytes(data)  # reported, never deleted or rewritten


def test_generate_writes_the_run_folder(generated_run):
    run_dir, status, out = generated_run
    assert status == 0 and f"wrote {run_dir}" in out
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "checkpoint.safetensors", "metrics.json", "views.png", "turntable.mp4",
            "turntable.gif", "mesh.glb", "mesh.obj", "mesh.ply"} <= names
    assert not [n for n in names if ".tmp" in n]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["prompt"] == TINY_PROMPT and config["run"]["steps"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["preset"] == "fast" and metrics["rule"] == "sdi"
    assert set(metrics["exports"]) == {"turntable", "views", "mesh"}


def test_generate_resume_of_a_finished_run_keeps_its_steps(capsys, tmp_path, generated_run):
    run_dir = tmp_path / "run"
    shutil.copytree(generated_run[0], run_dir)
    before = (run_dir / "checkpoint.safetensors").read_bytes()
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert main(["generate", "--resume", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "checkpoint.safetensors").read_bytes() == before  # nothing left to train
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["denoiser_calls"] == trained["denoiser_calls"]
    assert metrics["final_loss"] == trained["final_loss"] is not None  # the checkpoint remembers it
    capsys.readouterr()


# ------------------------------------------------------------------------------- export, catalog


def test_export_redoes_the_exports(capsys, tmp_path, generated_run):
    run_dir = tmp_path / "run"
    shutil.copytree(generated_run[0], run_dir)
    for name in ("views.png", "turntable.mp4", "turntable.gif", "mesh.glb", "mesh.obj", "mesh.ply"):
        (run_dir / name).unlink()
    assert main(["export", str(run_dir)]) == 0
    assert f"exported {run_dir}" in capsys.readouterr().out
    for name in ("views.png", "turntable.mp4", "turntable.gif", "mesh.glb", "mesh.obj", "mesh.ply"):
        assert (run_dir / name).stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["exports"]["views"] == str(run_dir / "views.png")


def test_export_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert "sdi generate" in error_line(capsys, ["export", str(tmp_path)])


def test_catalog_prints_the_vocabulary(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for kind, words in vocabulary().items():
        assert kind in out and all(word in out for word in words)
    assert 'sdi generate "' in out


# ------------------------------------------------------------------------------------ fast to say no

LIGHT_CHECK = """
import contextlib, io, json, sys
from sdi.cli.main import main
codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exit:
            codes.append(exit.code)
print(json.dumps([codes, sorted(m for m in ("torch", "numpy", "PIL", "diffusers", "transformers", "ray", "tqdm")
                                if m in sys.modules)]))
"""


def test_help_and_argument_errors_import_nothing_heavy(tmp_path, generated_run):
    """`sdi --help` and errors found in the arguments or the run folder answer before torch is imported (the
    wall times are measured by benchmarks/cli_startup.py). A subcommand's --help lists the registries (presets,
    2D methods), which imports them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "afile").write_text("x")
    argvs = [["--help"], ["generate", ""], ["generate", TINY_PROMPT, "--steps", "0"],
             ["generate", TINY_PROMPT, "--seed", str(2**64)], ["generate", TINY_PROMPT, "--out", str(tmp_path / "afile")],
             ["generate", TINY_PROMPT, "--out", str(generated_run[0])], ["generate", "--resume", str(tmp_path)],
             ["2d", "--cfg", "nan"], ["2d", "--out", str(tmp_path / "afile")], ["bench", "2d", "--workers", "0"],
             ["bench", "2d", "--ray", "local", "--steps", "0"], ["export", "--help"], ["catalog", "--help"], ["frob"]]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", LIGHT_CHECK, json.dumps(argvs)], env=env, capture_output=True,
                          text=True, timeout=300)
    codes, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 2] and heavy == [], done.stderr
