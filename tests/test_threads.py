"""Thread count: a documented option that never changes a result."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from sdi.diffusion.denoiser import CountingDenoiser
from sdi.priors.catalog import CatalogPrior
from sdi.threads import configure_threads
from sdi.train.loop import new_state, training_step

TINY_PROMPT = "a red cube"  # as in conftest.py


def _train(preset, threads: int) -> list[torch.Tensor]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        state, prior = new_state(preset, 0), CountingDenoiser(CatalogPrior(TINY_PROMPT))
        for _ in range(3):
            training_step(state, preset, preset.rule(), prior, TINY_PROMPT)
        return [p.detach().clone() for p in state.scene.field.parameters()]
    finally:
        torch.set_num_threads(previous)


def test_one_and_two_threads_train_alike(tiny_preset):
    """Equal to float32 rounding, not bit for bit: since ``fast`` draws tau up to 0.2 the third step's Adam update
    (a held step: same render, same target) differs by 3e-8 between 1 and 2 threads (render and target bit-identical:
    the backward or Adam sums in a thread-dependent order; which op was not found)."""
    from dataclasses import replace

    preset = replace(tiny_preset, resolution=32, batch=2)
    for a, b in zip(_train(preset, 1), _train(preset, 2)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_threads_option_sets_the_count_for_torch_and_subprocesses(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("SDI_THREADS", "2")
    previous = torch.get_num_threads()
    try:
        assert configure_threads(None) == 2 and torch.get_num_threads() == 2
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1  # --threads wins over SDI_THREADS
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "1"
    finally:
        torch.set_num_threads(previous)


def test_a_bad_thread_count_is_one_line(monkeypatch, capsys):
    from sdi.cli.main import main

    monkeypatch.setenv("SDI_THREADS", "many")
    assert main(["catalog"]) == 2
    assert capsys.readouterr().err.strip() == "sdi catalog: error: SDI_THREADS must be a positive whole number of " \
                                              "threads, got 'many'"
    assert main(["--threads", "0", "catalog"]) == 2
    assert "--threads: must be at least 1" in capsys.readouterr().err
