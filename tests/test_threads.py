"""Thread count: a documented option that never changes a result."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from sdi.diffusion.denoiser import CountingDenoiser
from sdi.priors.catalog import CatalogPrior
from sdi.threads import configure_threads, torch_threads
from sdi.train.loop import new_state, training_step

TINY_PROMPT = "a red cube"  # as in conftest.py
MAIN_PROMPT = "a red cube with white stripes"


def _train(preset, threads: int) -> list[torch.Tensor]:
    with torch_threads(threads):
        state, prior = new_state(preset, 0), CountingDenoiser(CatalogPrior(TINY_PROMPT))
        for _ in range(3):
            training_step(state, preset, preset.rule(), prior, TINY_PROMPT)
        return [p.detach().clone() for p in state.scene.field.parameters()]


def test_one_and_two_threads_train_alike(tiny_preset):
    """Bit for bit. At 32 x 32, 2 views and 16 samples a step evaluates ~28k samples: over torch's 32768-element
    grain, so 2 threads split the field's elementwise ops (without ``field_at``'s padding the third step's albedo
    sigmoid differs in 1-2 values and the parameters by 3e-8)."""
    from dataclasses import replace

    preset = replace(tiny_preset, resolution=32, batch=2)
    for a, b in zip(_train(preset, 1), _train(preset, 2)):
        assert torch.equal(a, b)


def test_the_priors_renders_do_not_depend_on_the_thread_count():
    """The main job's exemplars (23 variants and 7 distractors, 2x supersampled: 32768 rays, whose points and
    normals 2 threads split) at a camera pair where, traced on 2 threads, 5 values of the renders round
    differently (found by search: 5 of 150 pairs of ``fast``'s cameras differ so): bit-identical at 1 and 2 threads,
    and the count is left as it was."""
    from sdi.priors.catalog import CatalogPrior
    from sdi.train.presets import FAST

    cameras = FAST.cameras.sample(2, 64, torch.Generator().manual_seed(62))
    before = torch.get_num_threads()
    renders = {}
    for n in (1, 2):
        with torch_threads(n):
            renders[n] = CatalogPrior(MAIN_PROMPT).exemplars(cameras, 64, 64)[0]
            assert torch.get_num_threads() == n
        assert torch.get_num_threads() == before
    assert torch.equal(renders[1], renders[2])


def test_padded_field_calls_equal_the_field_and_give_the_padding_no_gradient():
    from sdi.scene.fields import GridField, GridFieldConfig
    from sdi.scene.renderer import THREAD_ALIGNMENT, field_at

    torch.manual_seed(0)
    field = GridField(GridFieldConfig(resolution=16, init_std=1.0))
    points = torch.rand(1000, 3) - 0.5
    assert 1000 % THREAD_ALIGNMENT != 0
    padded, plain = field_at(field, points), field(points)
    assert padded.density.shape == (1000,) and padded.albedo.shape == (1000, 3)
    torch.testing.assert_close(padded.density, plain.density, rtol=1e-6, atol=0)
    torch.testing.assert_close(padded.albedo, plain.albedo, rtol=1e-6, atol=0)
    (grad_padded,) = torch.autograd.grad(padded.density.sum() + padded.albedo.sum(), field.grid)
    (grad_plain,) = torch.autograd.grad(plain.density.sum() + plain.albedo.sum(), field.grid)
    torch.testing.assert_close(grad_padded, grad_plain, rtol=1e-5, atol=1e-6)


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
