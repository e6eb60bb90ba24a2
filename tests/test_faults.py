"""Every bad input and fault of the machine a user met (the issue tried ~80; here by family) ends in ONE line
on stderr, ``sdi CMD: error: ...``, exit status 2 and no traceback, and an earlier finished run in the same
folder (a 3D run, and 2D outputs) is byte-identical afterwards.

The case table (CASES) runs in-process. The full and read-only disks are real small tmpfs mounts when the
tests run as root (CI does); otherwise those tests are skipped, saying why, and the simulated full-disk cases
of the table still run. A model folder with pickled weights only is refused without anything being unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import sdi.io
import sdi.train.loop as loop
from helpers import error_line, snapshot
from sdi import run_folder
from sdi.cli.main import main
from sdi.limits import SEED_MAX

TINY_PROMPT, TINY_RESOLUTION = "a red cube", 16  # as in conftest.py
GEN = ("--steps", "2", "--resolution", str(TINY_RESOLUTION), "--quiet")
NEW = ("generate", TINY_PROMPT, *GEN)  # a valid new run; cases add the one bad part
OVER = ("--out", "{run}", "--overwrite")  # ... aimed at the earlier run, which must survive the failure
TWOD = ("2d", "--size", "16", "--steps", "3", "--quiet", "--out", "{run2d}")
SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------------- set-ups


def make_file(paths, monkeypatch):
    (paths["tmp"] / "afile").write_text("not a folder")


def flip_a_byte(paths, monkeypatch):
    checkpoint = paths["run"] / run_folder.CHECKPOINT
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.unlink()  # a hard-linked copy: never write through to the shared original
    checkpoint.write_bytes(bytes(data))


def truncate(paths, monkeypatch):
    checkpoint = paths["run"] / run_folder.CHECKPOINT
    data = checkpoint.read_bytes()[:1000]
    checkpoint.unlink()
    checkpoint.write_bytes(data)


def remove_checkpoint(paths, monkeypatch):
    (paths["run"] / run_folder.CHECKPOINT).unlink()


def config_text(text: str) -> Callable:
    def setup(paths, monkeypatch):
        (paths["run"] / run_folder.CONFIG).unlink()
        (paths["run"] / run_folder.CONFIG).write_text(text)
    return setup


def config_field(name: str, value) -> Callable:
    def setup(paths, monkeypatch):
        config = json.loads((paths["run"] / run_folder.CONFIG).read_text())
        config["run"][name] = value
        config_text(json.dumps(config))(paths, monkeypatch)
    return setup


def without(module: str) -> Callable:
    """The optional package ``module`` missing (importing it raises ImportError)."""
    return lambda paths, monkeypatch: monkeypatch.setitem(sys.modules, module, None)


def no_gpu(paths, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def hub_offline(paths, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def empty_folder(paths, monkeypatch):
    (paths["tmp"] / "empty").mkdir()


def disk_full_at(prefix: str) -> Callable:
    """Writes of files whose temporary name starts with ``prefix`` fail as on a full disk."""
    def setup(paths, monkeypatch):
        real = sdi.io._fsync_file

        def fsync(path):
            if path.name.startswith(prefix):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path)

        monkeypatch.setattr(sdi.io, "_fsync_file", fsync)
    return setup


def out_of_memory(paths, monkeypatch):
    def step(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(loop, "training_step", step)


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` with {run} (a finished 3D run), {run2d} (finished 2D outputs) and {tmp}
    (an empty scratch folder); ``says``: what the line must contain; ``setup(paths, monkeypatch)``: the fault."""

    argv: tuple[str, ...]
    says: tuple[str, ...]
    setup: Callable | None = None


VOCABULARY = ("cube", "sphere", "stripes")
CASES = {
    # ---- generate: the prompt
    "generate empty prompt": Case(("generate", "", *GEN, *OVER), ("empty prompt",)),
    "generate blank prompt": Case(("generate", "   ", *GEN, *OVER), ("empty prompt",)),
    "generate no prompt": Case(("generate", *GEN, *OVER), ("empty prompt",)),
    "generate unknown word": Case(("generate", "a purple elephant", *GEN, *OVER), ("unknown word 'elephant'", *VOCABULARY)),
    "generate emoji": Case(("generate", "a red cube 🙂", *GEN, *OVER), ("unknown word '🙂'", *VOCABULARY)),
    "generate accented letter": Case(("generate", "a rèd cube", *GEN, *OVER), ("unknown word 'rèd'",)),
    "generate zero-width space": Case(("generate", "a red\u200bcube", *GEN, *OVER), ("unknown word 'red\\u200bcube'",)),
    "generate two shapes": Case(("generate", "a red cube sphere", *GEN, *OVER), ("exactly one shape",)),
    "generate no shape": Case(("generate", "a red", *GEN, *OVER), ("exactly one shape",)),
    "generate second colour, no pattern": Case(("generate", "a red cube with blue", *GEN, *OVER), ("no pattern",)),
    # ---- generate: numbers
    "generate steps 0": Case((*NEW, *OVER, "--steps", "0"), ("--steps: must be at least 1, got 0",)),
    "generate steps -3": Case((*NEW, *OVER, "--steps", "-3"), ("--steps: must be at least 1",)),
    "generate steps abc": Case((*NEW, *OVER, "--steps", "abc"), ("--steps: must be a whole number, got 'abc'",)),
    "generate steps 1.5": Case((*NEW, *OVER, "--steps", "1.5"), ("--steps: must be a whole number",)),
    "generate steps nan": Case((*NEW, *OVER, "--steps", "nan"), ("--steps: must be a whole number",)),
    "generate seed 2**64": Case((*NEW, *OVER, "--seed", str(2**64)), (f"--seed: must be a whole number from 0 to {SEED_MAX}",)),
    "generate seed -1": Case((*NEW, *OVER, "--seed", "-1"), (f"from 0 to {SEED_MAX}, got -1",)),
    "generate seed nan": Case((*NEW, *OVER, "--seed", "nan"), (f"from 0 to {SEED_MAX}",)),
    "generate resolution 4": Case((*NEW, *OVER, "--resolution", "4"), ("--resolution: must be at least 8",)),
    "generate batch 0": Case((*NEW, *OVER, "--batch", "0"), ("--batch: must be at least 1",)),
    "generate chunk 0": Case((*NEW, *OVER, "--chunk", "0"), ("--chunk: must be at least 1",)),
    "generate checkpoint-seconds 0": Case((*NEW, *OVER, "--checkpoint-seconds", "0"), ("must be above 0",)),
    "generate checkpoint-seconds nan": Case((*NEW, *OVER, "--checkpoint-seconds", "nan"), ("must be a finite number",)),
    "generate checkpoint-seconds inf": Case((*NEW, *OVER, "--checkpoint-seconds", "inf"), ("must be a finite number",)),
    # ---- generate: names
    "generate unknown preset": Case((*NEW, *OVER, "--preset", "turbo"), ("invalid choice: 'turbo'", "sdi-paper")),
    "generate unknown method": Case((*NEW, *OVER, "--method", "magic"), ("invalid choice: 'magic'", "sds")),
    "generate method and preset": Case((*NEW, *OVER, "--method", "sds", "--preset", "fast"), ("not both",)),
    "generate resume and overwrite": Case(("generate", "--resume", "{run}", "--overwrite"), ("not both",)),
    "generate unknown flag": Case((*NEW, *OVER, "--frobnicate"), ("unrecognized arguments: --frobnicate",)),
    "generate unknown prior": Case((*NEW, *OVER, "--prior", "magic"), ("unknown prior 'magic'",)),
    "generate sd folder missing": Case((*NEW, *OVER, "--prior", "sd:{tmp}/nowhere"), ("no Stable Diffusion folder",)),
    "generate sd hub id not cached": Case((*NEW, *OVER, "--prior", "sd:nobody-here/no-model"),
                                          ("not in the Hugging Face cache", "hf download nobody-here/no-model"),
                                          hub_offline),
    "generate sd hub id, no huggingface_hub": Case((*NEW, *OVER, "--prior", "sd:nobody-here/no-model"),
                                                   ("needs huggingface_hub: pip install 'sdi[sd]'",),
                                                   without("huggingface_hub")),
    "generate unknown device": Case((*NEW, *OVER, "--device", "gpu"), ("unknown device 'gpu'",)),
    "generate cuda without a GPU": Case((*NEW, *OVER, "--prior", "sd:{tmp}", "--device", "cuda"),
                                        ("--device cuda needs a CUDA GPU",), no_gpu),
    # ---- generate: the run folder
    "generate out is a file": Case((*NEW, "--out", "{tmp}/afile"), ("{tmp}/afile is a file, not a folder",), make_file),
    "generate out under a file": Case((*NEW, "--out", "{tmp}/afile/run"), ("a part of that path is a file",),
                                      make_file),
    "generate out name too long": Case((*NEW, "--out", "{tmp}/" + "x" * 300), ("too long for the file system",)),
    "generate out holds a finished run": Case((*NEW, "--out", "{run}"),
                                              ("holds a finished run of 'a red cube' (3 of 3 steps)", "--overwrite")),
    "generate disk full at the first checkpoint": Case((*NEW, *OVER), ("no room to write {run}/checkpoint.safetensors",
                                                                       "it needs 5.", "MiB",
                                                                       "no checkpoint of this run was written yet",
                                                                       "the run it was to replace is intact"),
                                                       disk_full_at(".checkpoint")),
    "generate out of memory": Case((*NEW, *OVER), ("out of memory", "can't allocate memory", "--resolution"),
                                   out_of_memory),
    # ---- generate --resume
    "resume missing folder": Case(("generate", "--resume", "{tmp}/nowhere"), ("config.json not found",)),
    "resume a file": Case(("generate", "--resume", "{tmp}/afile"), ("config.json not found",), make_file),
    "resume an empty folder": Case(("generate", "--resume", "{tmp}"), ("config.json not found",)),
    "resume garbage config": Case(("generate", "--resume", "{run}"), ("not a run config",), config_text("{not json")),
    "resume config not an object": Case(("generate", "--resume", "{run}"), ("not a run config",), config_text("[]")),
    "resume config unknown field": Case(("generate", "--resume", "{run}"), ("not a run config", "colour"),
                                        config_field("colour", 1)),
    "resume config NaN": Case(("generate", "--resume", "{run}"), ("not a run config", "NaN is not a valid JSON number"),
                              config_text('{"run": {"prompt": "a red cube", "steps": NaN}}')),
    "resume config seed a string": Case(("generate", "--resume", "{run}"), ("field 'seed' is 'zero'",),
                                        config_field("seed", "zero")),
    "resume config seed 2**64": Case(("generate", "--resume", "{run}"), (f"seed must be a whole number from 0 to {SEED_MAX}",),
                                     config_field("seed", 2**64)),
    "resume config other prompt": Case(("generate", "--resume", "{run}"), ("does not match", "differ in prompt"),
                                       config_field("prompt", "a blue sphere")),
    "resume flipped byte": Case(("generate", "--resume", "{run}"), ("corrupt (tensor checksum mismatch)",
                                                                    "no earlier checkpoint is kept"), flip_a_byte),
    "resume truncated checkpoint": Case(("generate", "--resume", "{run}"), ("truncated or corrupt",), truncate),
    "resume no checkpoint": Case(("generate", "--resume", "{run}"), ("nothing to resume",), remove_checkpoint),
    "resume unknown device": Case(("generate", "--resume", "{run}", "--device", "gpu"), ("unknown device 'gpu'",)),
    # ---- export
    "export missing folder": Case(("export", "{tmp}/nowhere"), ("config.json not found",)),
    "export not a run": Case(("export", "{tmp}"), ("config.json not found",)),
    "export flipped byte": Case(("export", "{run}"), ("corrupt",), flip_a_byte),
    "export disk full": Case(("export", "{run}"), ("no room to write {run}/views.png",), disk_full_at(".views")),
    "generate disk full in the exports": Case((*NEW, "--out", "{tmp}/new"),
                                              ("no room to write {tmp}/new/views.png",
                                               "the trained checkpoint is kept: `sdi export {tmp}/new`"),
                                              disk_full_at(".views")),
    # ---- 2d
    "2d cfg nan": Case((*TWOD, "--cfg", "nan"), ("--cfg: must be a finite number, got 'nan'",)),
    "2d cfg inf": Case((*TWOD, "--cfg", "inf"), ("--cfg: must be a finite number",)),
    "2d cfg abc": Case((*TWOD, "--cfg", "abc"), ("--cfg: must be a number",)),
    "2d cfg 1e308": Case((*TWOD, "--cfg", "1e308"), ("became NaN or infinite", "lower --cfg")),
    "2d steps 1": Case((*TWOD, "--steps", "1"), ("--steps: must be at least 2",)),
    "2d size 0": Case((*TWOD, "--size", "0"), ("--size: must be at least 8",)),
    "2d size 12": Case((*TWOD, "--size", "12"), ("must divide the image size 12x12",)),
    "2d patch 0": Case((*TWOD, "--patch", "0"), ("--patch: must be at least 1",)),
    "2d seed 2**64": Case((*TWOD, "--seed", str(2**64)), (f"from 0 to {SEED_MAX}",)),
    "2d unknown label": Case((*TWOD, "--prompt", "zebra"), ("unknown prompt 'zebra'", "checker")),
    "2d emoji label": Case((*TWOD, "--prompt", "🙂"), ("unknown prompt '🙂'",)),
    "2d empty label": Case((*TWOD, "--prompt", ""), ("empty --prompt",)),
    "2d unknown prior": Case((*TWOD, "--prior", "gaussian"), ("unknown prior 'gaussian'",)),
    "2d sd prior without a label": Case((*TWOD, "--prior", "sd:{tmp}"), ("empty --prompt",)),
    "2d unknown method": Case((*TWOD, "--method", "magic"), ("invalid choice: 'magic'", "sdi-cached")),
    "2d out is a file": Case((*TWOD, "--out", "{tmp}/afile"), ("is a file, not a folder",), make_file),
    "2d images missing": Case((*TWOD, "--images", "{tmp}/nowhere"), ("not found",)),
    "2d images empty": Case((*TWOD, "--images", "{tmp}/empty"), ("no PNG/JPG images",), empty_folder),
    "2d disk full": Case(TWOD, ("no room to write {run2d}/strip.png",), disk_full_at(".strip")),
    # ---- bench
    "bench unknown suite": Case(("bench", "4d"), ("invalid choice: '4d'",)),
    "bench workers 0": Case(("bench", "2d", "--workers", "0"), ("--workers: must be at least 1",)),
    "bench steps 0": Case(("bench", "2d", "--steps", "0"), ("--steps: must be at least 1",)),
    "bench prior on 3d": Case(("bench", "3d", "--prior", "patches", "--out", "{tmp}/b"), ("option of the 2d suite",)),
    "bench unknown method": Case(("bench", "2d", "--methods", "magic", "--out", "{tmp}/b"), ("unknown 2D method",)),
    "bench unknown object": Case(("bench", "3d", "--prompts", "a purple elephant", "--out", "{tmp}/b"),
                                 ("unknown word 'elephant'",)),
    "bench sd without folders": Case(("bench", "sd", "--out", "{tmp}/b"), ("is not a folder",)),
    "bench ray without Ray": Case(("bench", "2d", "--ray", "local", "--out", "{tmp}/b"),
                                  ("--ray needs Ray", "pip install 'sdi[bench]'"), without("ray")),
    # ---- sdi itself
    "no subcommand": Case((), ("required: command",)),
    "unknown subcommand": Case(("frob",), ("invalid choice: 'frob'",)),
}


@pytest.fixture(scope="module")
def earlier_2d(tmp_path_factory) -> Path:
    """Finished `sdi 2d` outputs (16 px, 3 steps)."""
    out = tmp_path_factory.mktemp("earlier-2d") / "2d"
    with contextlib.redirect_stdout(None):
        assert main(["2d", "--size", "16", "--steps", "3", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture
def folders(tmp_path, generated_run, earlier_2d) -> dict[str, Path]:
    """{run}: a finished 3D run, {run2d}: finished 2D outputs (hard-linked copies: atomic writes replace files,
    never write through them), {tmp}: an empty folder."""
    paths = {"run": tmp_path / "run", "run2d": tmp_path / "run2d", "tmp": tmp_path / "scratch"}
    shutil.copytree(generated_run[0], paths["run"], copy_function=os.link)
    shutil.copytree(earlier_2d, paths["run2d"], copy_function=os.link)
    paths["tmp"].mkdir()
    return paths


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(name, folders, capsys, monkeypatch):
    case = CASES[name]
    if case.setup:
        case.setup(folders, monkeypatch)
    before = {key: snapshot(folders[key]) for key in ("run", "run2d")}
    line = error_line(capsys, [arg.format(**folders) for arg in case.argv])
    for words in case.says:
        assert words.format(**folders) in line, line
    for key, files in before.items():
        assert snapshot(folders[key]) == files, f"the earlier {key} changed"


def test_the_case_table_covers_the_families():
    families = {name.split()[0] for name in CASES}
    assert {"generate", "resume", "export", "2d", "bench"} <= families and len(CASES) >= 80


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    """The same from a real `sdi` process: exit status 2, nothing on stdout, one line on stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-m", "sdi.cli.main", "2d", "--cfg", "nan", "--out", str(tmp_path / "2d")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stdout == "" and not (tmp_path / "2d").exists()
    assert done.stderr == "sdi 2d: error: argument --cfg: must be a finite number, got 'nan'; see `sdi 2d --help`\n"


# ------------------------------------------------------------------------- pickle is never opened


@pytest.fixture
def no_unpickling(monkeypatch) -> list[str]:
    """pickle and torch.load fail loudly (and are recorded) if anything calls them."""
    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called: something unpickled a file")
        return call

    class Unpickler:
        def __init__(self, *args, **kwargs):
            refuse("pickle.Unpickler")()

    monkeypatch.setattr(pickle, "Unpickler", Unpickler)
    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse(f"pickle.{name}"))
    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    return calls


@pytest.fixture(scope="module")
def pickled_sd(tmp_path_factory) -> Path:
    """The tiny Stable Diffusion with its UNet and text encoder weights as pickled .bin files only (the names
    diffusers and transformers fall back to)."""
    import safetensors.torch
    from tiny_sd import build_tiny_sd

    folder = build_tiny_sd(tmp_path_factory.mktemp("pickled-sd") / "sd")
    for name, stem in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        weights = folder / name / f"{stem}.safetensors"
        torch.save(safetensors.torch.load_file(weights), folder / name / f"{'pytorch_model' if stem == 'model' else stem}.bin")
        weights.unlink()
    return folder


def test_a_model_folder_with_only_pickled_weights_is_refused_unopened(pickled_sd, folders, capsys, monkeypatch,
                                                                      no_unpickling):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(folders["run2d"])
    line = error_line(capsys, [*[a.format(**folders) for a in TWOD], "--prior", f"sd:{pickled_sd}", "--prompt", "a cat"])
    assert f"{pickled_sd / 'unet'} holds only diffusion_pytorch_model.bin, no .safetensors" in line
    assert "SDI loads safetensors only" in line
    assert no_unpickling == [] and snapshot(folders["run2d"]) == before


def test_diffusers_and_transformers_are_asked_for_safetensors_only(pickled_sd, no_unpickling):
    """Behind our own check: the loaders run with use_safetensors=True, which refuses a .bin without opening it."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    for cls, name in ((UNet2DConditionModel, "unet"), (CLIPTextModel, "text_encoder")):
        with pytest.raises(OSError):
            cls.from_pretrained(pickled_sd, subfolder=name, local_files_only=True, use_safetensors=True)
    assert no_unpickling == []


# ------------------------------------------------------------------- real full and read-only disks


@pytest.fixture
def tmpfs(tmp_path) -> Callable[[str], Path]:
    """Mount a tmpfs of a given size (root only; skipped, saying why, elsewhere); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root); the simulated full-disk cases of "
                        "test_bad_input_is_one_line_and_loses_nothing ran instead")
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated full-disk cases ran")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its disk is full."""
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_a_nearly_full_disk_says_which_file_and_how_much_room(capsys, tmpfs):
    disk = tmpfs("600k")
    with contextlib.redirect_stdout(None):
        assert main(["2d", "--size", "16", "--steps", "3", "--quiet", "--out", str(disk / "2d")]) == 0
    before = snapshot(disk / "2d")
    line = error_line(capsys, [*NEW, "--out", str(disk / "run")])
    assert f"no room to write {disk / 'run' / 'checkpoint.safetensors'}: it needs 5." in line and "KiB free" in line
    assert not (disk / "run").exists()  # nothing left of the failed run
    fill(disk)
    line = error_line(capsys, ["2d", "--size", "16", "--steps", "3", "--seed", "1", "--quiet", "--out", str(disk / "2d")])
    assert f"no room to write {disk / '2d'}" in line and "files written before are intact" in line
    assert snapshot(disk / "2d") == before


def test_exports_that_do_not_fit_keep_the_checkpoint_for_sdi_export(capsys, tmpfs):
    disk = tmpfs("6m")  # the 5.2 MiB checkpoint fits, the 1.7 MB of exports after it do not
    run_dir = disk / "run"
    line = error_line(capsys, [*NEW, "--out", str(run_dir)])
    assert "no room to write" in line and f"`sdi export {run_dir}` writes the exports later" in line
    kept = {p.name for p in run_dir.iterdir() if not p.name.startswith("events.out.tfevents.")}  # + the run's log
    assert kept == {run_folder.CONFIG, run_folder.CHECKPOINT}
    assert run_folder.describe(run_dir) == "a trained run of 'a red cube' (2 of 2 steps) whose exports are missing"
    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    assert main(["export", str(run_dir)]) == 0 and (run_dir / run_folder.METRICS).is_file()


def test_a_read_only_disk_is_one_line_for_every_command(capsys, tmpfs, generated_run, earlier_2d):
    disk = tmpfs("20m")
    shutil.copytree(generated_run[0], disk / "run")
    shutil.copytree(earlier_2d, disk / "2d")
    before = {name: snapshot(disk / name) for name in ("run", "2d")}
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    for argv, path in (([*NEW, "--out", str(disk / "new")], disk / "new"),
                       (["generate", "--resume", str(disk / "run"), "--quiet"], disk / "run" / run_folder.LOCK),
                       (["export", str(disk / "run")], disk / "run" / run_folder.LOCK),
                       (["2d", "--size", "16", "--steps", "3", "--quiet", "--out", str(disk / "2d")],
                        disk / "2d" / run_folder.LOCK)):
        assert f"cannot write {path}: the file system is read-only" in error_line(capsys, argv)
    assert {name: snapshot(disk / name) for name in ("run", "2d")} == before
