"""Run DDIM, SDS, SDI, ... in 2D from the same prior and seed (the paper's Figure 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sdi.data.builtin import DEFAULT_LABEL, builtin_images
from sdi.data.folder import load_image_folder
from sdi.export.figures import figure
from sdi.io import atomic_write_json, save_image
from sdi.priors.exemplar import ExemplarPrior
from sdi.twod import ALL_METHODS, Result2D, check_image_prior, decoded, image_prior, measure, run_method


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=None, help=f"class label of the prior (default: {DEFAULT_LABEL})")
    parser.add_argument("--method", default="sdi", choices=[*ALL_METHODS, "all"], help="default: sdi")
    parser.add_argument("--cfg", type=float, default=7.5, help="forward guidance scale (default 7.5)")
    parser.add_argument("--steps", type=int, default=50, help="number of steps (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image size of the built-in set (default 32)")
    parser.add_argument("--images", type=Path, default=None, help="folder of images (subfolders = labels)")
    parser.add_argument("--prior", default="patches",
                        help="closed-form prior over the images: 'patches' (default: quilts of exemplar tiles, "
                             "which SDS blurs like a real model), 'exemplar' (whole images); or sd:PATH")
    parser.add_argument("--patch", type=int, default=8, help="tile size of the 'patches' prior (default 8)")
    parser.add_argument("--out", type=Path, default=Path("out/2d"), help="output folder (default out/2d)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def load_prior(args: argparse.Namespace):
    """The exemplar prior over the built-in set or a folder, or Stable Diffusion."""
    if args.prior.startswith("sd:"):
        from sdi.priors.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(args.prior[3:], device="cuda" if torch.cuda.is_available() else "cpu")
    check_image_prior(args.prior)
    images, labels = load_image_folder(args.images, args.size) if args.images else builtin_images(args.size)
    return image_prior(args.prior, images, labels, args.patch)


def write_result(prior, result: Result2D, out: Path, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_image(out / "final.png", figure(decoded(prior, result.image), nrow=1, scale=4))
    strip = torch.cat([decoded(prior, s) for s in result.snapshots])
    save_image(out / "strip.png", figure(strip, nrow=len(strip), scale=2))
    atomic_write_json(out / "metrics.json", {"method": result.method, **info, **result.metrics})


def run(args: argparse.Namespace) -> int:
    # Check the arguments before building the prior (seconds for the built-in set).
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2, got {args.steps}")
    prompt = args.prompt if args.prompt is not None else ("" if args.prior.startswith("sd:") else DEFAULT_LABEL)
    if not prompt.strip():
        raise ValueError("empty --prompt; give a label of the prior (see its list in the error for an unknown one)")
    prior = load_prior(args)
    prior.members(prompt) if isinstance(prior, ExemplarPrior) else None  # fail fast on an unknown label
    shape = tuple(prior.encode(torch.zeros(1, 3, args.size, args.size)).shape)
    methods = list(ALL_METHODS) if args.method == "all" else ["ddim", args.method]
    results = {m: run_method(prior, m, prompt, args.cfg, args.steps, args.seed, shape, not args.quiet) for m in methods}
    for result in results.values():
        result.metrics.update(measure(prior, prompt, result.image, results["ddim"].image))
    info = {"prompt": prompt, "seed": args.seed, "steps": args.steps, "cfg": args.cfg}
    shown = results if args.method == "all" else {args.method: results[args.method]}
    for name, result in shown.items():
        write_result(prior, result, args.out / name if len(shown) > 1 else args.out, info)
    if args.method == "all":
        row = torch.cat([decoded(prior, r.image) for r in results.values()])
        save_image(args.out / "comparison.png", figure(row, nrow=len(row), scale=2, labels=list(results)))
        atomic_write_json(args.out / "metrics.json", {m: {**info, **r.metrics} for m, r in results.items()})
    for name, result in shown.items():
        m = result.metrics
        off = f"  off the prior {m['distance_to_prior']:.4f}" if "distance_to_prior" in m else ""
        print(f"{name:>13}: distance to DDIM {m['distance_to_ddim']:.4f}  detail {m['detail_vs_ddim']:.3f}{off}  "
              f"{m['denoiser_calls']} denoiser calls  {m['wall_time_s']:.2f} s")
    print(f"wrote {args.out}")
    return 0
