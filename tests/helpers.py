"""Shared test helpers: the command line's one-line errors, snapshots of a folder's files, a run killed mid-step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sdi.train.loop as loop
from sdi.cli.main import main


def error_line(capsys, argv: list[str]) -> str:
    """Run ``sdi argv`` in-process: it must return 2 (no exception escapes, so no traceback) with exactly one line
    on stderr, ``sdi CMD: error: ...``, which is returned."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    prog = "sdi" if not argv or argv[0].startswith("-") else f"sdi {argv[0]}"
    assert lines[0].startswith(f"{prog}: error: ") or lines[0].startswith("sdi: error: "), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Killed(Exception):
    """Stands for the process being killed."""


def kill_at(monkeypatch, step: int) -> None:
    """Make the training step that starts at ``step`` raise, like a kill in the middle of it."""
    real = loop.training_step

    def step_or_die(state, *args, **kwargs):
        if state.step == step:
            raise Killed(f"killed at step {step}")
        return real(state, *args, **kwargs)

    monkeypatch.setattr(loop, "training_step", step_or_die)


def train_to_the_end(state, preset, denoiser, prompt: str):
    """Drive ``train`` from ``state`` to the preset's last step; returns ``state``."""
    for _ in loop.train(state, preset, preset.rule(), denoiser, prompt):
        pass
    return state


def checkpoint_after(run_dir: Path, preset, denoiser, prompt: str, seed: int, steps: int) -> None:
    """Train a fresh ``seed`` state for ``steps`` steps by driving the ``train`` generator, stop it there, and save its
    checkpoint into ``run_dir`` (a run stopped mid-way, to be restored with ``restore_state``)."""
    from sdi.train.run import RunConfig, save_state

    state = loop.new_state(preset, seed=seed)
    running = loop.train(state, preset, preset.rule(), denoiser, prompt)
    for _ in range(steps):
        next(running)
    running.close()
    save_state(run_dir, state, RunConfig(prompt, preset.name, seed=seed), 0.0, 0)
