"""A run folder belongs to one run: a second run is refused (or, by default, goes to a fresh folder), a second
writer is locked out, config.json comes only with its checkpoint, checkpoints come by wall time too, the previous
checkpoint is kept, and a killed run resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import Killed, error_line, kill_at, snapshot
from sdi import run_folder
from sdi.cli.main import main
from sdi.run_folder import CHECKPOINT, CONFIG, METRICS, PREVIOUS
from sdi.train.checkpoint import CheckpointError
from sdi.train.presets import FAST, PRESETS
from sdi.train.run import RunConfig, restore_state, train_run

TINY_PROMPT, TINY_RESOLUTION = "a red cube", 16  # as in conftest.py
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def finished(tmp_path, generated_run) -> tuple[Path, dict]:
    """A copy of the finished tiny run (the conftest one) and the snapshot of its files."""
    run_dir = tmp_path / "run"
    shutil.copytree(generated_run[0], run_dir)
    return run_dir, snapshot(run_dir)


# ---------------------------------------------------------------------------------- one run per folder


def test_a_second_run_into_a_finished_run_is_refused_and_changes_nothing(capsys, finished):
    run_dir, before = finished
    line = error_line(capsys, ["generate", "a blue sphere", "--steps", "2", "--out", str(run_dir), "--quiet"])
    assert f"{run_dir} holds a finished run of 'a red cube' (3 of 3 steps)" in line and "--overwrite" in line
    assert snapshot(run_dir) == before


def test_the_default_folder_of_a_finished_run_is_never_reused(capsys, finished, tmp_path, monkeypatch):
    run_dir, before = finished
    monkeypatch.chdir(tmp_path)
    default = Path("runs") / "a-red-cube-fast-s0"
    default.parent.mkdir()
    run_dir.rename(default)
    assert main(["generate", TINY_PROMPT, "--steps", "2", "--resolution", str(TINY_RESOLUTION), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote runs/a-red-cube-fast-s0-2 (runs/a-red-cube-fast-s0 holds a finished run of 'a red cube'" in out
    assert snapshot(default) == before
    assert json.loads((Path("runs/a-red-cube-fast-s0-2") / METRICS).read_text())["steps"] == 2


def test_default_folder_names_stay_short(tmp_path):
    name = run_folder.default_name("a " * 300 + "red cube " + "with " * 100, "fast", 7)  # a valid prompt
    assert len(name) <= run_folder.SLUG_CHARS + len("-fast-s7") and name.endswith("-fast-s7")
    (tmp_path / "runs" / name).mkdir(parents=True)  # the file system takes it
    assert run_folder.default_name("🙂", "fast", 0) == "run-fast-s0"


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(finished, tiny_preset, monkeypatch):
    run_dir, before = finished
    config = RunConfig("a blue sphere", "tiny", resolution=TINY_RESOLUTION)
    with monkeypatch.context() as m:
        kill_at(m, 1)  # before the first checkpoint (step 2)
        with pytest.raises(Killed):
            train_run(run_dir, config, progress=False, overwrite=True)
    assert snapshot(run_dir) == before  # the red cube is intact

    old_logs = {p.name for p in run_dir.glob("events.out.tfevents.*")}
    train_run(run_dir, config, progress=False, overwrite=True)
    logs = {p.name for p in run_dir.glob("events.out.tfevents.*")}
    names = {p.name for p in run_dir.iterdir()} - logs
    assert names == {CONFIG, CHECKPOINT, PREVIOUS}  # the red cube's metrics and exports are gone with it
    assert len(logs) == 1 and not logs & old_logs  # and its TensorBoard log: only the blue sphere's is left
    assert json.loads((run_dir / CONFIG).read_text())["run"]["prompt"] == "a blue sphere"
    meta = run_folder.checkpoint_meta(run_dir / CHECKPOINT)
    assert meta["step"] == 6 and meta["extra"]["config"]["prompt"] == "a blue sphere"
    assert run_folder.checkpoint_meta(run_dir / PREVIOUS)["step"] == 4  # this run's own previous checkpoint


def test_a_new_run_that_fails_early_leaves_no_folder(capsys, tmp_path):
    line = error_line(capsys, ["generate", "a purple elephant", "--out", str(tmp_path / "run"), "--quiet"])
    assert "elephant" in line and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoints and config


def test_checkpoints_come_by_wall_time_and_keep_the_previous_one(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", replace(tiny_preset, checkpoint_every=1000))
    config = RunConfig(TINY_PROMPT, "tiny")
    with monkeypatch.context() as m:
        kill_at(m, 3)
        with pytest.raises(Killed):
            train_run(tmp_path, config, progress=False, checkpoint_seconds=1e-9)  # every step is 'a minute later'
    assert run_folder.checkpoint_meta(tmp_path / CHECKPOINT)["step"] == 3
    assert run_folder.checkpoint_meta(tmp_path / PREVIOUS)["step"] == 2
    assert json.loads((tmp_path / CONFIG).read_text())["run"] == json.loads(json.dumps(config.__dict__))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name or p.name == run_folder.LOCK]


def test_a_corrupt_checkpoint_names_the_one_kept_before_it(tmp_path, tiny_preset):
    train_run(tmp_path, RunConfig(TINY_PROMPT, "tiny"), progress=False)
    checkpoint = tmp_path / CHECKPOINT
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        restore_state(tmp_path, tiny_preset, 0)
    message = str(error.value)
    assert "corrupt" in message and f"the checkpoint before it (step 4) is kept in {tmp_path / PREVIOUS}" in message
    (tmp_path / PREVIOUS).unlink()
    with pytest.raises(CheckpointError, match="no earlier checkpoint is kept"):
        restore_state(tmp_path, tiny_preset, 0)


@pytest.mark.parametrize("command", ["resume", "export"])
def test_a_config_that_does_not_match_the_checkpoint_is_refused(capsys, finished, command):
    run_dir, _ = finished
    config = json.loads((run_dir / CONFIG).read_text())
    config["run"]["prompt"] = "a blue sphere"
    (run_dir / CONFIG).write_text(json.dumps(config))
    before = snapshot(run_dir)
    argv = ["generate", "--resume", str(run_dir), "--quiet"] if command == "resume" else ["export", str(run_dir)]
    line = error_line(capsys, argv)
    assert f"{run_dir / CONFIG} does not match {run_dir / CHECKPOINT} (they differ in prompt)" in line
    assert snapshot(run_dir) == before


def test_resume_without_a_checkpoint_says_there_is_nothing_to_resume(capsys, finished):
    run_dir, _ = finished
    (run_dir / CHECKPOINT).unlink()
    before = snapshot(run_dir)
    line = error_line(capsys, ["generate", "--resume", str(run_dir), "--quiet"])
    assert "holds no checkpoint.safetensors, so there is nothing to resume" in line
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("argv", [["generate", TINY_PROMPT, "--overwrite", "--quiet", "--out"],
                                  ["generate", "--quiet", "--resume"], ["export"]])
def test_a_locked_folder_is_refused(capsys, finished, argv):
    run_dir, before = finished
    with run_folder.locked(run_dir):
        line = error_line(capsys, [*argv, str(run_dir)])
        assert f"another sdi process (pid {os.getpid()}) is writing to {run_dir}" in line
    assert snapshot(run_dir) == before  # the lock file goes with its holder


def sdi_process(*args: str) -> subprocess.Popen:
    """`sdi ARGS` in its own process (the source tree importable), stdout and stderr piped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "sdi.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


def test_kill_9_after_a_wall_time_checkpoint_then_resume_continues_from_it(capsys, tmp_path):
    """A real process checkpoints by wall time (every 0.05 s; its preset checkpoints every 50 steps, after the
    last one here), is stopped: a second run into its folder is refused, then it is killed with SIGKILL, and
    `--resume` continues from the checkpoint it left."""
    run_dir, steps = tmp_path / "run", 25
    proc = sdi_process("generate", TINY_PROMPT, "--steps", str(steps), "--resolution", str(TINY_RESOLUTION),
                       "--batch", "1", "--checkpoint-seconds", "0.05", "--out", str(run_dir), "--quiet")
    try:
        wait_for(run_dir / CHECKPOINT, proc)
        proc.send_signal(signal.SIGSTOP)  # holds its lock, mid-run
        step = run_folder.checkpoint_meta(run_dir / CHECKPOINT)["step"]
        assert 0 < step < steps and step % FAST.checkpoint_every != 0, step  # a wall-time checkpoint
        line = error_line(capsys, ["generate", TINY_PROMPT, "--out", str(run_dir), "--quiet"])
        assert f"holds an unfinished run of 'a red cube' (stopped at step {step} of {steps})" in line
        for argv in (["generate", TINY_PROMPT, "--out", str(run_dir), "--overwrite", "--quiet"],
                     ["generate", "--resume", str(run_dir), "--quiet"]):
            assert f"another sdi process (pid {proc.pid}) is writing to {run_dir}" in error_line(capsys, argv)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.communicate()
    killed_at = run_folder.checkpoint_meta(run_dir / CHECKPOINT)["step"]
    assert killed_at >= step

    assert main(["generate", "--resume", str(run_dir), "--quiet"]) == 0
    assert f"{steps} steps (continued from step {killed_at})" in capsys.readouterr().out
    metrics = json.loads((run_dir / METRICS).read_text())
    assert metrics["start_step"] == killed_at and metrics["steps"] == steps
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name or p.name == run_folder.LOCK]
