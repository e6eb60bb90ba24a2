"""Generate a 3D object from a prompt (default: the embedded CPU prior, a few minutes)."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from sdi.export.options import MeshOptions
from sdi.io import atomic_write_json
from sdi.train.presets import PRESETS
from sdi.train.run import RunConfig, read_config, restore_state, run_device, train_run

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
    parser.add_argument("--resolution", type=int, default=None,
                        help="override the preset's render resolution; sd: resizes renders to the model's size "
                             "(512 for SD 2.1-base), so 128/256/512 trade speed and VRAM for detail")
    parser.add_argument("--batch", type=int, default=None, help="override the preset's views rendered per step")
    parser.add_argument("--chunk", type=int, default=None, metavar="RAYS",
                        help="render this many rays at a time (less transient memory; default: all at once)")
    parser.add_argument("--vae-checkpointing", dest="gradient_checkpointing_vae", default=None,
                        action=argparse.BooleanOptionalAction,
                        help="(sd: only) recompute the VAE's activations in the backward pass: less VRAM")
    parser.add_argument("--compile-unet", default=None, action=argparse.BooleanOptionalAction,
                        help="(sd: only) torch.compile the UNet, on CUDA")
    add_device_argument(parser)
    add_mesh_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<prompt>-s<seed>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue a killed run (with its own settings; only --device may change)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="(sd: only) cpu, cuda or cuda:N: where the scene and Stable Diffusion run; default "
                             "cuda if available, else cpu (the embedded prior runs on the CPU)")


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texture-size", type=int, default=None, metavar="PX",
                        help="side of the baked albedo texture of mesh.glb/.obj (default 512 on CPU, 2048 on CUDA)")
    parser.add_argument("--faces", type=int, default=None, metavar="N",
                        help="face budget of the textured mesh.glb/.obj (default 10000; 0: every marching-cubes "
                             "face, slow to unwrap); mesh.ply keeps every face")


def mesh_options(args: argparse.Namespace) -> MeshOptions:
    """The mesh export options given on the command line (one-line errors for bad sizes)."""
    given = {"max_faces": args.faces} if args.faces is not None else {}
    return MeshOptions(texture_size=args.texture_size, **given)


def config_from(args: argparse.Namespace) -> RunConfig:
    if args.method and args.preset:
        raise ValueError("give --method or --preset, not both")
    if not args.prompt or not args.prompt.strip():
        raise ValueError('empty prompt; try sdi generate "a red cube with white stripes" (`sdi catalog` lists words)')
    preset = args.preset or METHOD_PRESETS[args.method or "sdi"]
    return RunConfig(args.prompt.strip(), preset, args.prior, args.steps, args.seed, args.resolution, args.device,
                     args.batch, args.chunk, args.gradient_checkpointing_vae, args.compile_unet)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        config, run_dir = with_device(read_config(args.resume), args.device), args.resume
        ignored = (args.prompt, args.preset, args.method, args.steps, args.resolution, args.batch, args.chunk,
                   args.gradient_checkpointing_vae, args.compile_unet)
        if any(value is not None for value in ignored):
            print(f"note: --resume continues {run_dir}/config.json as it is; other arguments than --device "
                  "are ignored", file=sys.stderr)
    else:
        config = config_from(args)
        run_dir = args.out or Path("runs") / run_name(config)
    metrics = generate(run_dir, config, mesh_options(args), resume=bool(args.resume), progress=not args.quiet)
    print(f"{metrics['steps']} steps in {metrics['wall_time_s']:.1f} s, {metrics['denoiser_calls']} denoiser calls; "
          f"wrote {run_dir}; {describe_mesh(metrics['exports']['mesh'])}")
    return 0


def run_name(config: RunConfig) -> str:
    """The default run folder's name: <prompt>-<preset>-s<seed>."""
    slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")
    return f"{slug}-{config.preset}-s{config.seed}"


def generate(run_dir: Path, config: RunConfig, mesh: MeshOptions = MeshOptions(), resume: bool = False,
             progress: bool = True, on_step=None) -> dict:
    """Train, export and write metrics.json: all of ``sdi generate`` after its arguments (``sdi serve`` too).
    ``on_step(state, info)`` is called after every training step (see ``train_run``)."""
    metrics = train_run(run_dir, config, resume=resume, progress=progress, on_step=on_step)
    metrics["exports"] = export(run_dir, config, mesh)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def describe_mesh(mesh: dict) -> str:
    """One line on the mesh export: faces, the automatic iso level and the texture size, or why it was skipped."""
    if "skipped" in mesh:
        return f"no mesh ({mesh['skipped']})"
    return (f"mesh at iso level {mesh['iso_level']:.4g} (chosen automatically): {mesh['faces']} faces textured "
            f"{mesh['texture_size']} px (glb, obj), {mesh['ply_faces']} with vertex colours (ply)")


def with_device(config: RunConfig, device: str | None) -> RunConfig:
    """``config`` moved to ``device`` when one is given (a run may continue or export on another machine)."""
    return config if device is None else replace(config, device=device)


def export(run_dir: Path, config: RunConfig, mesh: MeshOptions = MeshOptions()) -> dict:
    """Rebuild the scene from the checkpoint on the run's device and write every export."""
    from sdi.export.run_outputs import export_run

    preset = config.resolved_preset()
    state, _ = restore_state(run_dir, preset, config.seed, run_device(config))
    return export_run(state.scene, run_dir, min(2 * preset.resolution, 256), mesh)
