"""The run queue behind `sdi serve` (no browser, no gradio): one run at a time per device, the next waits and
says so, a failing run becomes the CLI's one-line error; the runs folder as the page lists it; serve's arguments."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from sdi.cli.main import main
from sdi.export.options import MeshOptions
from sdi.train.run import RunConfig, check_prior
from sdi.web.jobs import RunQueue, status_text
from sdi.web.runs import list_runs, run_files


class GatedRunner:
    """A stand-in for `sdi generate` that runs until released: records what ran and when, in order."""

    def __init__(self):
        self.release = {}
        self.order = []
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.order.append(job.id)
        self.release.setdefault(job.id, threading.Event()).wait(10)
        with self.lock:
            self.active -= 1
        if job.config.prompt == "boom":
            raise ValueError("the field diverged; lower the learning rate")
        if job.config.prompt == "bug":
            raise KeyError("not a user error")
        return {"steps": 3, "wall_time_s": 1.0, "exports": {"mesh": {"skipped": "empty volume"}}}

    def finish(self, job):
        self.release.setdefault(job.id, threading.Event()).set()


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def submit(jobs, prompt, device="cpu", name="run"):
    return jobs.submit(RunConfig(prompt), MeshOptions(), Path("/tmp/unused") / name, device, 3)


def test_a_second_run_waits_for_the_first_and_says_so():
    runner = GatedRunner()
    jobs = RunQueue(runner)
    first, second = submit(jobs, "a red cube"), submit(jobs, "a blue sphere", name="b")
    wait_for(lambda: first.state == "training")
    assert second.state == "queued" and jobs.ahead(second) == 1
    assert status_text(second, jobs.ahead(second)).startswith("Waiting: 1 run ahead on cpu")
    third = submit(jobs, "a green cone", name="c")
    assert status_text(third, jobs.ahead(third)).startswith("Waiting: 2 runs ahead on cpu")
    runner.finish(first)
    wait_for(lambda: second.state == "training")
    assert first.state == "done" and jobs.ahead(third) == 1
    runner.finish(second), runner.finish(third)
    wait_for(lambda: third.over)
    assert runner.order == [first.id, second.id, third.id] and runner.most_active == 1
    assert status_text(third, 0).startswith("Done: 3 steps in 1.0 s") and "no mesh (empty volume)" in status_text(
        third, 0)


def test_devices_have_their_own_queues():
    runner = GatedRunner()
    jobs = RunQueue(runner)
    on_cpu, on_gpu = submit(jobs, "a red cube"), submit(jobs, "a red cube", device="cuda:0", name="g")
    wait_for(lambda: on_cpu.state == on_gpu.state == "training")
    assert runner.most_active == 2
    runner.finish(on_cpu), runner.finish(on_gpu)
    wait_for(lambda: on_cpu.over and on_gpu.over)


def test_a_failing_run_shows_the_cli_line_and_the_queue_goes_on(capsys):
    runner = GatedRunner()
    jobs = RunQueue(runner)
    failing, bug, after = submit(jobs, "boom"), submit(jobs, "bug", name="x"), submit(jobs, "a red cube", name="y")
    for job in (failing, bug, after):
        runner.finish(job)
    wait_for(lambda: after.over)
    assert failing.state == "failed"
    assert failing.error == "sdi generate: error: the field diverged; lower the learning rate"
    assert status_text(failing, 0) == failing.error
    assert bug.state == "failed" and bug.error.startswith("sdi serve: internal error: KeyError")
    assert after.state == "done"
    assert "KeyError" in capsys.readouterr().err  # the traceback goes to the server's log


def test_fresh_run_folders_skip_existing_and_queued_names(tmp_path):
    jobs = RunQueue(GatedRunner())
    (tmp_path / "a-red-cube-fast-s0").mkdir()
    first = jobs.fresh_run_dir(tmp_path, "a-red-cube-fast-s0")
    assert first == tmp_path / "a-red-cube-fast-s0-2"
    jobs.submit(RunConfig("a red cube"), MeshOptions(), first, "cpu", 3)
    assert jobs.fresh_run_dir(tmp_path, "a-red-cube-fast-s0") == tmp_path / "a-red-cube-fast-s0-3"


def test_progress_and_eta_from_the_step_callback():
    import torch

    from sdi.train.loop import StepInfo
    from sdi.web.jobs import Job

    def losses(value: float) -> dict:
        return {"loss": torch.tensor(value), "distill": torch.tensor(value)}

    job = Job(1, RunConfig("a red cube"), MeshOptions(), Path("r"), "cpu", total_steps=10, state="training")
    job.on_step(None, StepInfo(1, 900, losses(0.5)))
    time.sleep(0.05)
    job.on_step(None, StepInfo(2, 800, losses(0.25)))
    assert job.step == 2 and job.loss == 0.25 and 0.04 < job.seconds_per_step < 1
    assert job.eta_s == pytest.approx(8 * job.seconds_per_step)
    text = status_text(job, 0)
    assert text.startswith("Training step 2/10: loss 0.25, t 800") and "ETA" in text
    job.on_step(None, StepInfo(10, 200, losses(0.1)))
    assert job.state == "exporting"


@pytest.mark.parametrize("config, words", [(RunConfig("a zebra cube"), ["unknown word 'zebra'"]),
                                           (RunConfig("a red cube", prior="sd:/nowhere"), ["/nowhere"]),
                                           (RunConfig("a red cube", prior="magic"), ["unknown prior"])])
def test_check_prior_raises_what_loading_would(config, words):
    with pytest.raises(ValueError) as error:
        check_prior(config)
    assert all(word in str(error.value) for word in words)


def test_the_runs_folder_as_listed(tmp_path, generated_run):
    run_dir = generated_run[0]
    assert list_runs(tmp_path / "none") == []
    (tmp_path / "stray").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "config.json").write_text(json.dumps({"run": {"prompt": "a red cube", "preset": "fast"}}))
    listed = list_runs(tmp_path)
    assert [r.name for r in listed] == ["killed"] and listed[0].steps is None
    (summary,) = list_runs(run_dir.parent)
    assert summary.prompt == "a red cube" and summary.steps == 3 and summary.prior == "embedded"
    found = run_files(run_dir)
    assert found["glb"] == run_dir / "mesh.glb" and found["turntable"] == run_dir / "turntable.gif"
    assert {p.name for p in found["downloads"]} >= {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply"}


@pytest.mark.parametrize("argv, words", [(["--port", "0"], ["--port"]), (["--port", "70000"], ["--port"])])
def test_serve_rejects_bad_arguments_in_one_line(capsys, argv, words):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sdi serve: error: ") and all(w in err for w in words)


def test_serve_says_when_runs_is_not_a_folder(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert main(["serve", "--runs", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
