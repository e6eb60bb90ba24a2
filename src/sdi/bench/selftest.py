"""Toy job functions that exercise the grid runner itself (``sdi.bench.selftest:toy_job``): metrics computed from
the seed, a job that SIGKILLs its own worker, one that raises, one that returns no dict. Used by the tests; a
worker imports job functions only from ``sdi.bench.runner.JOB_MODULES``, which lists this module.

No torch import, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import os
import signal

FIX_ENV = "SDI_TOY_FIXED"
"""When this environment variable is set, ``toy_job`` no longer kills itself (the "fixed" bug)."""


def toy_job(job) -> dict[str, float | str]:
    """Metrics computed from the seed; ``params["crash"] == "kill"`` SIGKILLs the worker, ``"raise"`` raises."""
    crash = job.params_dict.get("crash", "")
    if crash == "kill" and not os.environ.get(FIX_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    if crash == "raise":
        raise RuntimeError("toy failure")
    scale = float(job.params_dict.get("scale", 1.0))
    note = f"{job.method}:{job.prompt}"
    return {"score": scale * job.seed, "square": float(job.seed**2), "note": note, "diverged": float(job.seed == 3)}


def not_a_dict(job):
    return [job.seed]
