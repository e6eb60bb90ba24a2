"""Shared fixtures: one on-disk cache for the session, tiny priors and one tiny `sdi generate` run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

TINY_PROMPT = "a red cube"
"""Catalog prompt of every tiny 3D run."""
TINY_RESOLUTION = 16
"""Render (and embedded prior) resolution of every tiny 3D run."""


@pytest.fixture(scope="session", autouse=True)
def sdi_cache(tmp_path_factory) -> Path:
    """SDI_CACHE in a temporary folder shared by the session: the multi-view prior renders once."""
    folder = tmp_path_factory.mktemp("sdi-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDI_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def multiview_prior(sdi_cache):
    """The embedded prior of TINY_PROMPT at TINY_RESOLUTION (what `sdi generate --resolution 16` loads)."""
    from sdi.priors.multiview import build_multiview_prior

    return build_multiview_prior(TINY_PROMPT, TINY_RESOLUTION)


@pytest.fixture(scope="session")
def exemplar_prior():
    """The exemplar prior over a small built-in set, 16 x 16."""
    from sdi.data.builtin import builtin_images
    from sdi.priors.exemplar import ExemplarPrior

    images, labels = builtin_images(16, per_class=16)
    return ExemplarPrior(images, labels)


@pytest.fixture(scope="session")
def generated_run(tmp_path_factory, sdi_cache):
    """`sdi generate "a red cube" --steps 3 --resolution 16`, run once: (run dir, exit status, stdout)."""
    from sdi.cli.main import main

    run_dir = tmp_path_factory.mktemp("generate") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(["generate", TINY_PROMPT, "--steps", "3", "--resolution", str(TINY_RESOLUTION),
                       "--out", str(run_dir), "--quiet"])
    return run_dir, status, out.getvalue()
