"""What SDI's kappa is on the embedded prior, and whether the variants' mean (the blur) holds SDI's target.

SDI's kappa is the DDIM inversion of the render (Eq. 8's root) plus the entropy term 0.3 N(0, I). The embedded prior
is a mixture of a prompt's variants, each widened by N(0, s0^2 I): its own samples lie s0 per pixel from a variant
and invert to a noise of RMS 0.5-1 (part 1, "prior sample"), while the images a run renders (a variant, the
variants' mean, anything between) lie within ~0.2 per pixel of the variants and invert to a much smaller noise.
Through a run, SDI's kappa is then mostly its entropy term (part 2), where SDS draws a noise of RMS 1.

Part 3 asks whether the blur holds: it moves the variants' mean a little towards one variant and measures how far
each rule's target leans the same way, over how far the image leant (the gain). Above 1 the blur repels, and a run
that reaches it leaves it; below 1 it attracts.

Part 1 (seconds): kappa RMS of the inversion alone (the paper's: CFG -7.5, int(10 t) steps, no entropy) of variant
0, of the variants' mean and of one of the prior's own samples (variant 0 + s0 z), at two held-out cameras, for the
six objects of the modes table, on the multi-view prior at the default s0 and at s0 = 0.3. Part 2 (``--train``,
~3 min): kappa RMS through a 300-step run on ``fast``'s field and prior with one Adam step per target, SDI (the
paper's rule) and SDS (CFG 7.5), on one object, in bins of t. Part 3 (~20 s): the gains of SDI (the paper's
inversion, and a 50-step one) and of SDS at four levels, same cameras.

    python benchmarks/kappa_norm.py --train --out docs/results/kappa-norm.md
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sdi.bench.modes import MODE_OBJECTS
from sdi.bench.report import publish_markdown, script_command
from sdi.distill.noise import Inversion, Noise, NoiseQuery
from sdi.distill.rule import distill_update
from sdi.distill.sdi import sdi_paper
from sdi.distill.sds import sds
from sdi.distill.timesteps import Levels
from sdi.priors.catalog import SMOOTHING, CatalogPrior
from sdi.scene.cameras import Cameras, held_out_cameras
from sdi.train.presets import FAST_INVERSION_STEPS

LEVELS = (300, 500, 800)
SIZE = 64
SMOOTHINGS = (SMOOTHING, 0.3)
TRAIN_OBJECT = "a yellow capsule with blue checkers"
T_BINS = ((800, 1000), (600, 800), (400, 600), (200, 400))
GAIN_LEVELS = (200, 400, 600, 800)
LEAN, LEANS_TO = 0.05, (1, 2, 3, 4)
"""Part 3's image: the variants' mean moved 5% of the way to variant k, for each k here."""
FINE_INVERSION = FAST_INVERSION_STEPS
"""Inversion steps of part 3's second SDI column, ``fast``'s (the paper's int(10 t) is 2-8 at these levels)."""
SDS_DRAWS = 8
TAU_MEAN = 17
"""tau at its mean (1/60 of the 1000 levels) for part 3's SDI targets."""


def two_cameras() -> Cameras:
    cams = held_out_cameras(8, SIZE)
    return Cameras(cams.c2w[:2], cams.fovy[:2], SIZE, SIZE)


def rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


def inversion_rms(prior: CatalogPrior, cameras: Cameras, x0: torch.Tensor, t: int) -> float:
    """RMS of kappa = the inversion alone (the paper's rule without its entropy term) of x0 (B, 3, H, W) to level t."""
    rule = replace(sdi_paper(), noise=Inversion(cfg=-7.5))
    update = distill_update(rule, prior, x0, Levels(t, t), prior.target.prompt, torch.Generator().manual_seed(0), {},
                            cameras)
    return rms(update.noise.kappa)


def variant_renders(prior: CatalogPrior, cameras: Cameras) -> torch.Tensor:
    """(B, K, 3, H, W) float32 renders of the prior's K variants at the B cameras."""
    flat, _ = prior.exemplars(cameras, SIZE, SIZE)
    return flat[:, :len(prior.variants)].float().reshape(len(cameras.c2w), -1, 3, SIZE, SIZE)


def static_rows() -> list[str]:
    """Part 1: one row per object and s0."""
    cameras, rows = two_cameras(), []
    for prompt in MODE_OBJECTS:
        for s0 in SMOOTHINGS:
            prior = CatalogPrior(prompt, smoothing=s0, joint_views=True)
            variants = variant_renders(prior, cameras)
            sample = variants[:, 0] + s0 * torch.randn(variants[:, 0].shape, generator=torch.Generator().manual_seed(1))
            images = {"variant 0": variants[:, 0], "variant mean": variants.mean(1), "prior sample": sample}
            cells = [f"{inversion_rms(prior, cameras, x, t):.3f}" for x in images.values() for t in LEVELS]
            spread = rms(variants - variants.mean(1, keepdim=True))
            rows.append(f"| {prompt} | {s0:g} | {spread:.3f} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return rows


def lean_gain(target: torch.Tensor, mean: torch.Tensor, direction: torch.Tensor, lean: float) -> float:
    """How far ``target`` leans along ``direction`` from ``mean``, over the ``lean`` of the image it was made from:
    1 = as far as the image, > 1 = further (the mean repels), < 1 = back (the mean attracts)."""
    return ((target - mean) * direction).sum().item() / direction.pow(2).sum().item() / lean


def blur_gains(prompt: str, t: int) -> list[float]:
    """Mean ``lean_gain`` at level t of the targets made from the variants' mean leaning by ``LEAN`` towards each
    of ``LEANS_TO``: SDI with the paper's inversion, SDI with ``FINE_INVERSION`` steps (both without entropy,
    tau at its mean), and SDS's target averaged over ``SDS_DRAWS`` noises."""
    cameras = two_cameras()
    prior = CatalogPrior(prompt, joint_views=True)
    variants = variant_renders(prior, cameras)
    mean = variants.mean(1)
    paper = sdi_paper(entropy=0.0)
    rules = (paper, replace(paper, noise=Inversion(cfg=-7.5, steps=FINE_INVERSION)))
    gains = [[], [], []]
    for k in LEANS_TO:
        direction = variants[:, k] - mean
        x0 = mean + LEAN * direction
        for i, rule in enumerate(rules):
            update = distill_update(rule, prior, x0, Levels(t, t + TAU_MEAN), prompt, torch.Generator(), {}, cameras)
            gains[i].append(lean_gain(update.target.float(), mean, direction, LEAN))
        targets = [distill_update(sds(cfg=7.5), prior, x0, Levels(t, t), prompt, torch.Generator().manual_seed(s), {},
                                  cameras).target.float() for s in range(SDS_DRAWS)]
        gains[2].append(lean_gain(torch.stack(targets).mean(0), mean, direction, LEAN))
    return [sum(g) / len(g) for g in gains]


def gain_rows() -> list[str]:
    """Part 3: one row per object, the three gains at each of ``GAIN_LEVELS``."""
    rows = []
    for prompt in MODE_OBJECTS:
        cells = [" / ".join(f"{g:.2f}" for g in blur_gains(prompt, t)) for t in GAIN_LEVELS]
        rows.append(f"| {prompt} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


@dataclass
class Recording:
    """A kappa estimator that keeps (t, RMS of kappa) of every call."""

    inner: object
    seen: list = field(default_factory=list)

    def __call__(self, q: NoiseQuery) -> Noise:
        noise = self.inner(q)
        self.seen.append((int(q.t_update), rms(noise.kappa)))
        return noise


def train_rows(workdir: Path) -> list[str]:
    """Part 2: kappa RMS by t bin over a 300-step run of SDI (the paper's rule) and of SDS on ``TRAIN_OBJECT``, on
    ``fast``'s field and prior with one Adam step per target (``fast`` as it was when this was measured)."""
    from sdi.bench.evaluate import evaluate_scene
    from sdi.bench.suites import fit
    from sdi.train.presets import FAST
    from sdi.train.run import RunConfig

    rows = []
    for name, make in (("sdi", sdi_paper), ("sds", lambda: sds(cfg=7.5))):
        rule = make()
        recording = Recording(rule.noise)
        preset = replace(FAST, name=name, rule=lambda: replace(rule, noise=recording), steps_per_target=1)
        scene, _ = fit(workdir / name, RunConfig(TRAIN_OBJECT, "fast", "embedded", FAST.steps, 0), preset)
        scores = evaluate_scene(scene, TRAIN_OBJECT)
        cells = []
        for lo, hi in T_BINS:
            values = [r for t, r in recording.seen if lo <= t < hi]
            cells.append(f"{sum(values) / max(len(values), 1):.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {scores['psnr']:.1f} | {scores['rms_to_nearest']:.3f} | "
                    f"{scores['rms_to_mean']:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="also part 2: two 300-step fast runs (~4 min on 1 core)")
    p.add_argument("--workdir", type=Path, default=Path("runs/kappa-norm"), help="run folders of part 2")
    p.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    levels = " | ".join(f"{name} t={t}" for name in ("variant 0", "variant mean", "prior sample") for t in LEVELS)
    lines = ["## 1. RMS of the inversion alone (no entropy), two held-out cameras, multi-view prior", "",
             "'spread': RMS of the variants about their mean, [-1, 1] units (the prior's samples add s0 per "
             "pixel).", "",
             f"| object | s0 | spread | {levels} |", "|---|---|---|" + "---|" * 3 * len(LEVELS), *static_rows()]
    if args.train:
        bins = " | ".join(f"t in [{lo}, {hi})" for lo, hi in T_BINS)
        lines += ["", f"## 2. RMS of kappa through a {TRAIN_OBJECT!r} run (`fast` before 0dba3d1: the paper's SDI, 1 "
                  "Adam step per target; 300 steps, seed 0)", "",
                  "SDI's kappa includes its entropy term 0.3 N(0, I): an RMS of 0.30 is entropy alone.", "",
                  f"| rule | {bins} | PSNR nearest | RMS nearest | RMS mean |", "|---|" + "---|" * (len(T_BINS) + 3),
                  *train_rows(args.workdir)]
    lines += ["", "## 3. Does the blur hold? The gain of each rule's target at the variants' mean", "",
              f"The image is the variants' mean leaning {LEAN:g} of the way towards variant k (k in {LEANS_TO}, "
              "gains averaged); gain = how far the target leans the same way, over that: > 1, the mean repels (the "
              "run leaves it); < 1, it attracts. Cells: SDI with the paper's int(10 t) inversion steps / SDI with "
              f"{FINE_INVERSION} inversion steps (both without entropy) / SDS's target averaged over {SDS_DRAWS} "
              "noises.", "",
              "| object | " + " | ".join(f"t = {t}" for t in GAIN_LEVELS) + " |", "|---|" + "---|" * len(GAIN_LEVELS),
              *gain_rows()]
    command = script_command("kappa_norm.py", argv)
    text = "\n".join(["# What SDI's kappa is on the embedded prior", "",
                      f"`{command}` (torch {torch.__version__}, 1 thread, {time.perf_counter() - start:.0f} s)", "",
                      *lines, ""])
    publish_markdown(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
