"""Generate a 3D object from a prompt (default: the embedded CPU prior, a few minutes)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from sdi import run_folder
from sdi.cli.args import Registry, at_least, positive, seed
from sdi.errors import WriteError
from sdi.export.options import MeshOptions
from sdi.limits import RUN_MINIMUM, SEED_MAX

METHOD_PRESETS = {"sdi": "fast", "sds": "sds", "ism": "ism", "nfsd": "nfsd", "csd": "csd", "sdi-paper": "sdi-paper",
                  "sdi-reference": "sdi-reference", "sds-threestudio": "sds-threestudio"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help='e.g. "a red cube with white stripes" (see `sdi catalog`)')
    parser.add_argument("--method", choices=list(METHOD_PRESETS), default=None,
                        help="distillation rule (picks the matching preset); default sdi")
    parser.add_argument("--preset", choices=Registry("sdi.train.presets", "PRESETS"), metavar="PRESET", default=None,
                        help="default: fast; one of %(choices)s")
    parser.add_argument("--prior", default="embedded", help="'embedded' (default) or sd:PATH")
    parser.add_argument("--steps", type=at_least(RUN_MINIMUM["steps"]), default=None,
                        help="override the preset's steps")
    parser.add_argument("--seed", type=seed, default=0, help=f"0 (default) to {SEED_MAX}")
    parser.add_argument("--resolution", type=at_least(RUN_MINIMUM["resolution"]), default=None,
                        help="override the preset's render resolution; sd: resizes renders to the model's size "
                             "(512 for SD 2.1-base), so 128/256/512 trade speed and VRAM for detail")
    parser.add_argument("--batch", type=at_least(RUN_MINIMUM["batch"]), default=None,
                        help="override the preset's views rendered per step")
    parser.add_argument("--views-per-step", type=at_least(1), default=None, metavar="K",
                        help="K views per step, gradients averaged, steps divided by K (same denoiser budget)")
    parser.add_argument("--antithetic", action="store_true",
                        help="with --views-per-step: draw the views in pairs 180 degrees apart in azimuth")
    parser.add_argument("--chunk", type=at_least(RUN_MINIMUM["chunk"]), default=None, metavar="RAYS",
                        help="render this many rays at a time (less transient memory; default: all at once)")
    parser.add_argument("--vae-checkpointing", dest="gradient_checkpointing_vae", default=None,
                        action=argparse.BooleanOptionalAction,
                        help="(sd: only) recompute the VAE's activations in the backward pass: less VRAM")
    parser.add_argument("--compile-unet", default=None, action=argparse.BooleanOptionalAction,
                        help="(sd: only) torch.compile the UNet, on CUDA")
    add_device_argument(parser)
    add_mesh_arguments(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default runs/<prompt>-<preset>-s<seed>, or the first of -2, -3... that "
                             "holds no run); refused when it holds a run, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (it stays intact until this run's first checkpoint)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue a killed run (with its own settings; only --device may change)")
    parser.add_argument("--checkpoint-seconds", type=positive, default=60.0, metavar="S",
                        help="also checkpoint every S seconds of training (default 60), besides the preset's steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="(sd: only) cpu, cuda or cuda:N: where the scene and Stable Diffusion run; default "
                             "cuda if available, else cpu (the embedded prior runs on the CPU)")


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texture-size", type=at_least(1), default=None, metavar="PX",
                        help="side of the baked albedo texture of mesh.glb/.obj (default 512 on CPU, 2048 on CUDA)")
    parser.add_argument("--faces", type=at_least(0), default=None, metavar="N",
                        help="face budget of the textured mesh.glb/.obj (default 10000; 0: every marching-cubes "
                             "face, slow to unwrap); mesh.ply keeps every face")


def mesh_options(args: argparse.Namespace) -> MeshOptions:
    """The mesh export options given on the command line (one-line errors for bad sizes)."""
    given = {"max_faces": args.faces} if args.faces is not None else {}
    return MeshOptions(texture_size=args.texture_size, **given)


def preset_name(args: argparse.Namespace) -> str:
    """The preset a new run's arguments name (--preset, or the one of --method)."""
    return args.preset or METHOD_PRESETS[args.method or "sdi"]


def check_new_run(args: argparse.Namespace) -> str:
    """The prompt, stripped, after the checks that need no import; one-line errors."""
    if args.method and args.preset:
        raise ValueError("give --method or --preset, not both")
    if not args.prompt or not args.prompt.strip():
        raise ValueError('empty prompt; try sdi generate "a red cube with white stripes" (`sdi catalog` lists words)')
    return args.prompt.strip()


def new_run_dir(args: argparse.Namespace, prompt: str, preset: str) -> tuple[Path, str]:
    """--out (refused when it holds a run, unless --overwrite), or a default folder that holds no run; and a
    note saying why, when that is not the default one."""
    if args.out is not None:
        run_folder.check_new(args.out, args.overwrite)
        return args.out, ""
    default = Path("runs") / run_folder.default_name(prompt, preset, args.seed)
    run_dir = default if args.overwrite else run_folder.fresh(default)
    return run_dir, f" ({default} holds {run_folder.describe(default)})" if run_dir != default else ""


def config_from(args: argparse.Namespace, prompt: str, preset: str):
    """The RunConfig the arguments ask for."""
    from sdi.train.run import RunConfig

    return RunConfig(prompt, preset, args.prior, args.steps, args.seed, args.resolution, args.device,
                     args.batch, args.chunk, args.gradient_checkpointing_vae, args.compile_unet,
                     views_per_step=args.views_per_step, antithetic=args.antithetic)


def resumed_config(args: argparse.Namespace):
    """The config of the run in --resume (moved to --device); one-line errors when there is none to continue."""
    if not (args.resume / run_folder.CONFIG).is_file():  # before importing anything heavy
        raise run_folder.RunFolderError(run_folder.no_config(args.resume))
    from sdi.train.run import read_config

    config = with_device(read_config(args.resume), args.device)
    run_folder.check_resumable(args.resume)
    ignored = (args.prompt, args.preset, args.method, args.steps, args.resolution, args.batch, args.chunk,
               args.gradient_checkpointing_vae, args.compile_unet, args.views_per_step, args.antithetic or None)
    if any(value is not None for value in ignored):
        print(f"note: --resume continues {args.resume}/config.json as it is; other arguments than --device "
              "are ignored", file=sys.stderr)
    return config


def run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    mesh = mesh_options(args)
    if args.resume:
        run_dir, config, note = args.resume, resumed_config(args), ""
    else:
        prompt, preset = check_new_run(args), preset_name(args)
        run_dir, note = new_run_dir(args, prompt, preset)
        config = config_from(args, prompt, preset)
    metrics = generate(run_dir, config, mesh, resume=bool(args.resume), progress=not args.quiet,
                       overwrite=args.overwrite, checkpoint_seconds=args.checkpoint_seconds)
    print(f"{summary(metrics)}; wrote {run_dir}{note}; {describe_mesh(metrics['exports']['mesh'])}")
    return 0


def generate(run_dir: Path, config, mesh: MeshOptions = MeshOptions(), resume: bool = False, progress: bool = True,
             on_step=None, **run_options) -> dict:
    """Train, export and write metrics.json: all of ``sdi generate`` after its arguments (``sdi serve`` too).
    ``run_options`` (overwrite, checkpoint_seconds) and ``on_step(state, info)`` go to ``train_run``."""
    from sdi.train.run import train_run

    metrics = train_run(run_dir, config, resume=resume, progress=progress, on_step=on_step, **run_options)
    try:
        return write_outputs(run_dir, config, metrics, mesh)
    except WriteError as error:
        raise WriteError(f"{error}; the trained checkpoint is kept: `sdi export {run_dir}` writes the exports later",
                         error.filename, error.errno) from None


def describe_mesh(mesh: dict) -> str:
    """One line on the mesh export: faces, the automatic iso level and the texture size, or why it was skipped."""
    if "skipped" in mesh:
        return f"no mesh ({mesh['skipped']})"
    return (f"mesh at iso level {mesh['iso_level']:.4g} (chosen automatically): {mesh['faces']} faces textured "
            f"{mesh['texture_size']} px (glb, obj), {mesh['ply_faces']} with vertex colours (ply)")


def summary(metrics: dict) -> str:
    """'300 steps in 137.2 s, 2100 denoiser calls' (and where a resumed run continued from)."""
    resumed = f" (continued from step {metrics['start_step']})" if metrics.get("start_step") else ""
    return (f"{metrics['steps']} steps{resumed} in {metrics['wall_time_s']:.1f} s, "
            f"{metrics['denoiser_calls']} denoiser calls")


def with_device(config, device: str | None):
    """``config`` moved to ``device`` when one is given (a run may continue or export on another machine)."""
    return config if device is None else replace(config, device=device)


def write_outputs(run_dir: Path, config, metrics: dict, mesh: MeshOptions = MeshOptions()) -> dict:
    """Every export and metrics.json (with ``metrics`` and what was exported), all or nothing, under the lock."""
    from sdi.io import all_or_nothing, atomic_write_json

    with run_folder.locked(run_dir), all_or_nothing():
        metrics = {**metrics, "exports": export(run_dir, config, mesh)}
        atomic_write_json(run_dir / run_folder.METRICS, metrics)
    return metrics


def export(run_dir: Path, config, mesh: MeshOptions = MeshOptions()) -> dict:
    """Rebuild the scene from the checkpoint on the run's device and write every export."""
    from sdi.export.run_outputs import export_run
    from sdi.train.run import check_config_matches, restore_state, run_device

    preset = config.resolved_preset()
    state, extra = restore_state(run_dir, preset, config.seed, run_device(config))
    check_config_matches(run_dir, config, extra)
    return export_run(state.scene, run_dir, min(2 * preset.resolution, 256), mesh)
