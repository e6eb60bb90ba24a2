"""A mode or the mean: SDI vs both SDS baselines (CFG 7.5) on the embedded prior, 6 objects x 3 seeds.

Each run trains 300 steps of the CPU settings and is scored against its nearest variant and the variant mean
(``sdi.bench.modes``); runs.csv and report.md go to ``--out``, the report is also printed.

    python benchmarks/bench_modes.py --out docs/results/modes-joint-views  # 54 runs, ~55 min on 2 cores
    python benchmarks/bench_modes.py --objects 1 --seeds 1 --steps 20 --out /tmp/modes-pilot
    python benchmarks/bench_modes.py --single-view --out docs/results/modes
    python benchmarks/bench_modes.py --single-view --steps-per-target 3 --out docs/results/modes-3-steps-per-target

Every method runs on the prior of ``fast``, the multi-view form of the embedded prior (``--joint-views``, the
default); ``--single-view`` is the prior ``fast`` had before (one posterior per camera), and keeps the job keys of
the runs made with it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from sdi.bench.modes import MODE_METHODS, MODE_OBJECTS, grid_modes, modes_report
from sdi.bench.runner import run_grid
from sdi.threads import configure_threads
from sdi.io import atomic_write_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench-modes"))
    p.add_argument("--objects", type=int, default=len(MODE_OBJECTS), help="the first N of sdi.bench.modes.MODE_OBJECTS")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--methods", nargs="+", default=list(MODE_METHODS), choices=list(MODE_METHODS))
    p.add_argument("--steps-per-target", type=int, default=None,
                   help="Adam steps per distillation target for every method (Preset.steps_per_target); default: each "
                        "method's own (fast's 3 for SDI, 1 for the SDS baselines)")
    prior = p.add_mutually_exclusive_group()
    prior.add_argument("--joint-views", dest="joint_views", action="store_true", default=True,
                       help="the embedded prior as a multi-view prior: one posterior for each step's cameras "
                            "(Preset.joint_views; fast's prior, the default)")
    prior.add_argument("--single-view", dest="joint_views", action="store_false",
                       help="one posterior per camera (fast's prior before it took the multi-view one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep the rows of runs.csv that finished")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    configure_threads()  # one thread per worker (SDI_THREADS to change), inherited by the worker processes
    jobs = grid_modes(args.out / "runs", MODE_OBJECTS[:args.objects], args.seeds, args.steps, tuple(args.methods),
                      args.steps_per_target, args.joint_views)
    command = shlex.join(["python", "benchmarks/bench_modes.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    rows = run_grid(jobs, "sdi.bench.modes:job_modes", args.out, args.workers, None, args.resume, not args.quiet)
    report = modes_report(rows, command, time.perf_counter() - start, args.workers, args.steps_per_target,
                          args.joint_views)
    atomic_write_text(args.out / "report.md", report)
    print(report)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
