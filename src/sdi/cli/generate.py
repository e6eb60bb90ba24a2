"""Generate a 3D object from a prompt (default: the embedded CPU prior, a few minutes)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sdi.io import atomic_write_json
from sdi.train.presets import PRESETS
from sdi.train.run import RunConfig, read_config, restore_state, train_run

METHOD_PRESETS = {"sdi": "fast", "sds": "sds", "ism": "ism", "nfsd": "nfsd", "csd": "csd", "sdi-paper": "sdi-paper",
                  "sdi-reference": "sdi-reference"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help='e.g. "a red cube with white stripes" (see `sdi catalog`)')
    parser.add_argument("--method", choices=list(METHOD_PRESETS), default=None,
                        help="distillation rule (picks the matching preset); default sdi")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="default: fast")
    parser.add_argument("--prior", default="embedded", help="'embedded' (default) or sd:PATH")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=None, help="override the preset's render resolution")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<prompt>-s<seed>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a killed run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> RunConfig:
    if args.method and args.preset:
        raise ValueError("give --method or --preset, not both")
    if not args.prompt or not args.prompt.strip():
        raise ValueError('empty prompt; try sdi generate "a red cube with white stripes" (`sdi catalog` lists words)')
    preset = args.preset or METHOD_PRESETS[args.method or "sdi"]
    return RunConfig(args.prompt.strip(), preset, args.prior, args.steps, args.seed, args.resolution)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        config, run_dir = read_config(args.resume), args.resume
        if args.prompt or args.preset or args.method or args.steps is not None or args.resolution is not None:
            print(f"note: --resume continues {run_dir}/config.json as it is; other arguments are ignored",
                  file=sys.stderr)
    else:
        config = config_from(args)
        slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")
        run_dir = args.out or Path("runs") / f"{slug}-{config.preset}-s{config.seed}"
    metrics = train_run(run_dir, config, resume=bool(args.resume), progress=not args.quiet)
    metrics["exports"] = export(run_dir, config)
    atomic_write_json(run_dir / "metrics.json", metrics)
    print(f"{metrics['steps']} steps in {metrics['wall_time_s']:.1f} s, {metrics['denoiser_calls']} denoiser calls; "
          f"wrote {run_dir}")
    return 0


def export(run_dir: Path, config: RunConfig) -> dict:
    """Rebuild the scene from the checkpoint and write every export."""
    from sdi.export.run_outputs import export_run

    preset = config.resolved_preset()
    state, _ = restore_state(run_dir, preset, config.seed)
    return export_run(state.scene, run_dir, min(2 * preset.resolution, 256))
