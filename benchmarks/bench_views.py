"""K views per step at an equal denoiser budget (MV-SDI): K = 1 vs K = 2 uniform vs K = 2 antithetic pairs.

Each run trains the ``fast`` preset (SDI, the embedded CPU prior) on a catalog object with
``--views-per-step K`` (``sdi.train.presets.with_views_per_step``): K views per step in one batched
denoiser call per guidance step, their gradients averaged, ``--steps // K`` steps, so every run puts
the same number of images through the denoiser (``denoiser_images``; ``denoiser_calls`` counts the
batched calls, halved at K = 2). Antithetic: the two views of a step are 180 degrees apart in azimuth.
Scored against the ground truth at held-out cameras (``sdi.bench.evaluate``); runs.csv, report.md
and plots go to ``--out``, as for ``sdi bench 3d`` (the grid and job function: ``sdi.bench.suites.grid_views``,
``job_views``).

    python benchmarks/bench_views.py --out out/bench-views                  # 6 objects x 2 seeds, 300 steps
    python benchmarks/bench_views.py --objects 1 --seeds 1 --steps 20 --resolution 32 --out /tmp/pilot
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from sdi.bench.runner import run_grid
from sdi.threads import configure_threads
from sdi.bench.suites import VIEW_VARIANTS, grid_views, write_suite_report
from sdi.scene.catalog import catalog_objects


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench-views"))
    p.add_argument("--objects", type=int, default=6, help="the first N objects of catalog_objects(seed 0)")
    p.add_argument("--prompts", nargs="+", default=None, help="catalog objects instead of --objects")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="one-view steps (K = 2 runs half as many steps)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=list(VIEW_VARIANTS), choices=list(VIEW_VARIANTS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    configure_threads()  # one thread per worker (SDI_THREADS to change), inherited by the worker processes
    objects = args.prompts or [o.prompt for o in catalog_objects(0, args.objects)]
    jobs = grid_views(args.out / "runs", objects, args.seeds, args.steps, args.resolution, tuple(args.methods))
    command = shlex.join(["python", "benchmarks/bench_views.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    rows = run_grid(jobs, "sdi.bench.suites:job_views", args.out, args.workers, None, args.resume, not args.quiet)
    elapsed = time.perf_counter() - start
    path = write_suite_report("views", rows, args.out, command, elapsed, args.workers)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows)} jobs ({failed} failed) in {elapsed:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
