"""Run DDIM, SDS, SDI, ... in 2D from the same prior and seed (the paper's Figure 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdi import run_folder
from sdi.cli.args import Registry, at_least, finite, seed
from sdi.limits import SEED_MAX


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=None,
                        help="class label of the prior (default: checker, on the built-in set; sd: needs one)")
    parser.add_argument("--method", default="sdi", choices=Registry("sdi.twod", "ALL_METHODS", extra=("all",)),
                        metavar="METHOD", help="default: sdi; one of %(choices)s")
    parser.add_argument("--cfg", type=finite, default=7.5, help="forward guidance scale (default 7.5)")
    parser.add_argument("--steps", type=at_least(2), default=50, help="number of steps (default 50)")
    parser.add_argument("--seed", type=seed, default=0, help=f"0 (default) to {SEED_MAX}")
    parser.add_argument("--size", type=at_least(8), default=32, help="image size of the built-in set (default 32)")
    parser.add_argument("--images", type=Path, default=None, help="folder of images (subfolders = labels)")
    parser.add_argument("--prior", default="patches",
                        help="closed-form prior over the images: 'patches' (default: quilts of exemplar tiles, "
                             "which SDS blurs like a real model), 'exemplar' (whole images); or sd:PATH")
    parser.add_argument("--patch", type=at_least(1), default=8, help="tile size of the 'patches' prior (default 8)")
    parser.add_argument("--out", type=Path, default=Path("out/2d"),
                        help="output folder (default out/2d); its earlier 2D outputs are replaced, all at once")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def load_prior(args: argparse.Namespace):
    """The exemplar prior over the built-in set or a folder, or Stable Diffusion."""
    import torch

    from sdi.data.builtin import builtin_images
    from sdi.data.folder import load_image_folder
    from sdi.twod import check_image_prior, image_prior

    if args.prior.startswith("sd:"):
        from sdi.priors.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(args.prior[3:], device="cuda" if torch.cuda.is_available() else "cpu")
    check_image_prior(args.prior)
    images, labels = load_image_folder(args.images, args.size) if args.images else builtin_images(args.size)
    return image_prior(args.prior, images, labels, args.patch)


def write_result(prior, result, out: Path, info: dict) -> None:
    """final.png, strip.png and metrics.json of one method's ``Result2D``."""
    import torch

    from sdi.export.figures import figure
    from sdi.io import atomic_write_json, save_image
    from sdi.twod import decoded

    out.mkdir(parents=True, exist_ok=True)
    save_image(out / "final.png", figure(decoded(prior, result.image), nrow=1, scale=4))
    strip = torch.cat([decoded(prior, s) for s in result.snapshots])
    save_image(out / "strip.png", figure(strip, nrow=len(strip), scale=2))
    atomic_write_json(out / "metrics.json", {"method": result.method, **info, **result.metrics})


def run(args: argparse.Namespace) -> int:
    # Check the arguments before building the prior (seconds for the built-in set).
    if (args.prompt is None and args.prior.startswith("sd:")) or (args.prompt is not None and not args.prompt.strip()):
        raise ValueError("empty --prompt; give a label of the prior (see its list in the error for an unknown one)")
    with run_folder.claim(args.out, overwrite=True):  # refuses a file in the way; earlier 2D outputs are replaced
        from sdi.data.builtin import DEFAULT_LABEL

        prompt = args.prompt if args.prompt is not None else DEFAULT_LABEL
        results, prior = run_methods(args, prompt)
        info = {"prompt": prompt, "seed": args.seed, "steps": args.steps, "cfg": args.cfg}
        write_results(prior, results, args, info)
    for name, result in shown(results, args.method).items():
        m = result.metrics
        off = f"  off the prior {m['distance_to_prior']:.4f}" if "distance_to_prior" in m else ""
        print(f"{name:>13}: distance to DDIM {m['distance_to_ddim']:.4f}  detail {m['detail_vs_ddim']:.3f}{off}  "
              f"{m['denoiser_calls']} denoiser calls  {m['wall_time_s']:.2f} s")
    print(f"wrote {args.out}")
    return 0


def run_methods(args: argparse.Namespace, prompt: str) -> tuple[dict, object]:
    """DDIM and the method(s) asked for, from the same seed, measured against DDIM; a one-line error for a
    result that is not finite."""
    import torch

    from sdi.priors.exemplar import ExemplarPrior
    from sdi.twod import ALL_METHODS, measure, run_method

    prior = load_prior(args)
    prior.members(prompt) if isinstance(prior, ExemplarPrior) else None  # fail fast on an unknown label
    shape = tuple(prior.encode(torch.zeros(1, 3, args.size, args.size)).shape)
    methods = list(ALL_METHODS) if args.method == "all" else ["ddim", args.method]
    results = {m: run_method(prior, m, prompt, args.cfg, args.steps, args.seed, shape, not args.quiet) for m in methods}
    for name, result in results.items():
        if not torch.isfinite(result.image).all():
            raise ValueError(f"the {name} result became NaN or infinite at --cfg {args.cfg}; lower --cfg")
        result.metrics.update(measure(prior, prompt, result.image, results["ddim"].image))
    return results, prior


def shown(results: dict, method: str) -> dict:
    """The results written and printed: every method for 'all', else the one asked for."""
    return results if method == "all" else {method: results[method]}


OUTPUTS = ("final.png", "strip.png", "comparison.png", "metrics.json")
"""What `sdi 2d` writes into --out (and, for --method all, into one folder per method)."""


def earlier_outputs(out: Path) -> list[Path]:
    """The files an earlier `sdi 2d` left in ``out`` and its method folders."""
    from sdi.twod import ALL_METHODS

    return [folder / name for folder in (out, *(out / m for m in ALL_METHODS)) for name in OUTPUTS
            if (folder / name).is_file()]


def write_results(prior, results: dict, args: argparse.Namespace, info: dict) -> None:
    """Every image and metrics.json, all or nothing: they replace the earlier outputs of `sdi 2d` in --out
    (those not rewritten are removed), or, when a write fails, the earlier outputs stay as they were."""
    import torch

    from sdi.export.figures import figure
    from sdi.io import all_or_nothing, atomic_write_json, save_image
    from sdi.twod import decoded

    earlier = earlier_outputs(args.out)
    with all_or_nothing() as written:
        for name, result in shown(results, args.method).items():
            write_result(prior, result, args.out / name if args.method == "all" else args.out, info)
        if args.method == "all":
            row = torch.cat([decoded(prior, r.image) for r in results.values()])
            save_image(args.out / "comparison.png", figure(row, nrow=len(row), scale=2, labels=list(results)))
            atomic_write_json(args.out / "metrics.json", {m: {**info, **r.metrics} for m, r in results.items()})
    for path in set(earlier) - set(written):
        path.unlink()
        if path.parent != args.out and not any(path.parent.iterdir()):
            path.parent.rmdir()
