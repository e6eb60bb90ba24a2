"""Shared fixtures: tiny priors, a tiny preset and one tiny `sdi generate` run."""

from __future__ import annotations

import contextlib
import io

import pytest

TINY_PROMPT = "a red cube"
"""Catalog prompt of every tiny 3D run."""
TINY_RESOLUTION = 16
"""Render (and embedded prior) resolution of every tiny 3D run."""


@pytest.fixture
def catalog_prior():
    """The embedded prior of TINY_PROMPT (what `sdi generate` loads); it renders at whatever size it is asked."""
    from sdi.priors.catalog import CatalogPrior

    return CatalogPrior(TINY_PROMPT)


@pytest.fixture
def tiny_preset(monkeypatch):
    """A registered 6-step preset ("tiny": one view of TINY_RESOLUTION, 16 samples, checkpoint every 2)."""
    from dataclasses import replace

    from sdi.train.presets import FAST, PRESETS

    preset = replace(FAST, name="tiny", resolution=TINY_RESOLUTION, num_samples=16, batch=1, steps=6,
                     checkpoint_every=2)
    monkeypatch.setitem(PRESETS, "tiny", preset)
    return preset


@pytest.fixture(scope="session")
def exemplar_prior():
    """The exemplar prior over a small built-in set, 16 x 16."""
    from sdi.data.builtin import builtin_images
    from sdi.priors.exemplar import ExemplarPrior

    images, labels = builtin_images(16, per_class=16)
    return ExemplarPrior(images, labels)


@pytest.fixture(scope="session")
def generated_run(tmp_path_factory):
    """`sdi generate "a red cube" --steps 3 --resolution 16`, run once: (run dir, exit status, stdout)."""
    from sdi.cli.main import main

    run_dir = tmp_path_factory.mktemp("generate") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(["generate", TINY_PROMPT, "--steps", "3", "--resolution", str(TINY_RESOLUTION),
                       "--out", str(run_dir), "--quiet"])
    return run_dir, status, out.getvalue()
