"""Run the paper's comparisons and ablations (2d, 3d, ablations, sd) and write runs.csv, report.md, plots."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import time
from pathlib import Path

from sdi.bench import suites
from sdi.cli.args import Registry, at_least
from sdi.errors import UserError

JOB_FN = {"2d": "sdi.bench.suites:job_2d", "3d": "sdi.bench.suites:job_3d",
          "ablations": "sdi.bench.suites:job_ablation", "sd": "sdi.bench.suites:job_sd"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=suites.SUITES, help="which benchmark")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default out/bench-<suite>)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="concurrent jobs (default 2)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run on Ray: 'local' (a Ray instance on 127.0.0.1 only), 'auto' or ray://host:port")
    parser.add_argument("--resume", action="store_true", help="skip jobs already ok in OUT/runs.csv")
    parser.add_argument("--seeds", type=at_least(1), default=None, help="seeds per cell (2d: 3, 3d: 2, ablations: 2, sd: 1)")
    parser.add_argument("--steps", type=at_least(1), default=None,
                        help=f"steps per run (2d: 50, 3d/ablations: {suites.STEPS_3D}, sd: the preset's 10000)")
    parser.add_argument("--prompts", nargs="+", default=None,
                        help="labels (2d), catalog objects (3d, ablations) or text prompts (sd)")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the suite's methods")
    parser.add_argument("--resolution", type=at_least(8), default=None,
                        help=f"render size override (3d, sd; ablations default {suites.ABLATION_RESOLUTION})")
    parser.add_argument("--prior", default=None, choices=Registry("sdi.twod", "PRIORS_2D"), metavar="PRIOR",
                        help="2d: closed-form prior over the built-in set, %(choices)s (default patches)")
    parser.add_argument("--sd", default=None, metavar="PATH", help="local Stable Diffusion folder (sd suite)")
    parser.add_argument("--clip", default=None, metavar="PATH", help="local CLIP folder (sd suite)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def build_jobs(args: argparse.Namespace, out: Path) -> list:
    """The suite's grid with the command line's overrides."""
    kw = {k: v for k, v in (("seeds", args.seeds), ("steps", args.steps)) if v is not None}
    runs = out / "runs"
    if args.suite == "2d":
        return suites.grid_2d(**kw, **({"prompts": args.prompts} if args.prompts else {}),
                              **({"prior": args.prior} if args.prior else {}),
                              **({"methods": args.methods} if args.methods else {}))
    if args.suite == "3d":
        return suites.grid_3d(runs, **kw, **({"objects": args.prompts} if args.prompts else {}),
                              **({"methods": args.methods} if args.methods else {}), resolution=args.resolution)
    if args.suite == "ablations":
        objects = {"objects": args.prompts, "eq8_objects": args.prompts} if args.prompts else {}
        return suites.grid_ablations(runs, **kw, **objects,
                                     **({"variants": tuple(args.methods)} if args.methods else {}),
                                     **({"resolution": args.resolution} if args.resolution else {}))
    return suites.grid_sd(runs, args.sd, args.clip, **kw, **({"prompts": args.prompts} if args.prompts else {}),
                          **({"methods": args.methods} if args.methods else {}), resolution=args.resolution)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (from the parsed options, so it is right when called from Python)."""
    words = ["sdi", "bench", args.suite]
    for name in ("out", "workers", "ray", "seeds", "steps", "resolution", "prior", "sd", "clip"):
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name}", str(value)]
    for name in ("prompts", "methods"):
        if getattr(args, name):
            words += [f"--{name}", *getattr(args, name)]
    words += [f"--{name}" for name in ("resume", "quiet") if getattr(args, name)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from sdi.bench.runner import run_grid

    out = args.out or Path("out") / f"bench-{args.suite}"
    if args.prior and args.suite != "2d":
        raise ValueError("--prior is an option of the 2d suite (the 3d ones use the embedded prior, sd uses --sd)")
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise UserError("--ray needs Ray, which is not installed: pip install 'sdi[bench]'")
    jobs = build_jobs(args, out)
    command = command_line(args)
    start = time.perf_counter()
    rows = run_grid(jobs, JOB_FN[args.suite], out, args.workers, args.ray, args.resume, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    path = suites.write_suite_report(args.suite, rows, out, command, elapsed, args.workers)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows)} jobs ({failed} failed) in {elapsed:.0f} s; wrote {path}")
    return 0
