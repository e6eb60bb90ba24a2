"""Direct fit of field + optimizer variants to ground truth (no prior): what detail the CPU field can hold.

Every row trains the scene of a preset variant by MSE to ground-truth renders (``sdi.train.direct_fit``: the
training loop's cameras, render call, Adam and lr schedule; 2 views of 64x64 per step) and scores it at the 8
held-out cameras; s/step is the training step without the ground-truth render. ``today`` is the former ``fast``
preset, ``fast`` the current one; the other rows change one thing of one of them. One run measures every row,
one process at a time, so the s/step column compares rows back to back.

    python benchmarks/direct_fit.py                       # every row, 2 objects, 300 steps
    python benchmarks/direct_fit.py --quick               # 4 rows, 100 steps
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdi.scene.catalog import parse_prompt
from sdi.scene.fields import (DensityConfig, FieldOutput, GridFieldConfig, SolidBackground, SolidBackgroundConfig,
                              activate_density)
from sdi.train.direct_fit import direct_fit
from sdi.train.presets import FAST, LrSchedule, Preset

OBJECTS = ("a red cube with white stripes", "a blue sphere with yellow dots", "an orange torus with white stripes")
TODAY = replace(FAST, name="today", radiance_field=GridFieldConfig(resolution=48, bound=1.0, density=DensityConfig()),
                num_samples=48, lr=0.05, lr_schedule=LrSchedule(), random_background=0.0)
"""The ``fast`` preset before this comparison: 48^3 over [-1, 1]^3, softplus density, 48 samples, Adam 0.05."""


class TriplaneField(nn.Module):
    """Three (4, R, R) planes over [-bound, bound]^2 whose bilinear reads are summed into the 4 logits
    (density, albedo) of ``GridField``, the same blob and activation (a quick variant, linear decode)."""

    def __init__(self, cfg: GridFieldConfig, resolution: int = 128):
        super().__init__()
        self.cfg = cfg
        self.planes = nn.Parameter(cfg.init_std * torch.randn(3, 4, resolution, resolution))

    def _logits(self, points: Tensor) -> Tensor:
        x = points / self.cfg.bound
        coords = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]]).unsqueeze(2)  # (3, N, 1, 2)
        out = F.grid_sample(self.planes, coords, align_corners=True, padding_mode="zeros")  # (3, 4, N, 1)
        return out.sum(0)[..., 0].t()

    def density(self, points: Tensor) -> Tensor:
        return activate_density(self._logits(points)[:, 0], points, self.cfg.density)

    def forward(self, points: Tensor) -> FieldOutput:
        logits = self._logits(points)
        return FieldOutput(activate_density(logits[:, 0], points, self.cfg.density), torch.sigmoid(logits[:, 1:]))


@dataclass(frozen=True)
class Row:
    """One configuration: a preset, optionally a replacement field, grid upsamplings, a learned background."""

    name: str
    preset: Preset
    triplane: bool = False
    grow: tuple[tuple[int, int], ...] = ()
    learned_background: bool = False


def grid(preset: Preset, **changes) -> Preset:
    return replace(preset, radiance_field=replace(preset.radiance_field, **changes))


def rows(steps: int) -> list[Row]:
    """today, fast, and one change of either per row."""
    chosen = FAST
    c2f_start = max(steps // 3, 1)
    return [
        Row("today: 48^3, bound 1, softplus, 48 samples, lr 0.05", TODAY),
        Row("today + grid 64^3", grid(TODAY, resolution=64)),
        Row("today + bound 0.6", grid(TODAY, bound=0.6)),
        Row("today + bound 0.6 + exp density", grid(TODAY, bound=0.6, density=DensityConfig(activation="exp"))),
        Row("fast: bound 0.6, exp density (blob 4), 32 samples, lr 0.1, random background 0.5", chosen),
        Row("fast + blob 10 (DreamFusion's)", grid(chosen, density=DensityConfig(activation="exp"))),
        Row("fast + white background only", replace(chosen, random_background=0.0)),
        Row("fast + grid 64^3", grid(chosen, resolution=64)),
        Row("fast + grid 96^3", grid(chosen, resolution=96)),
        Row(f"fast + coarse-to-fine 24^3 -> 48^3 at step {c2f_start}", grid(chosen, resolution=24),
            grow=((c2f_start, 48),)),
        Row("fast + lr 0.05", replace(chosen, lr=0.05)),
        Row("fast + lr exponential decay to 0.1x", replace(chosen, lr_schedule=LrSchedule(final=0.1))),
        Row("fast + lr warmup 30 + cosine to 0.1x", replace(chosen, lr_schedule=LrSchedule(30, 0.1, "cosine"))),
        Row("fast + 48 samples", replace(chosen, num_samples=48)),
        Row("fast + 96 samples", replace(chosen, num_samples=96)),
        Row("fast + triplane 3 x 128^2 (no normals)", replace(chosen, render=replace(chosen.render, normals=None)),
            triplane=True),
        Row("fast + learned solid background", chosen, learned_background=True),
    ]


QUICK = (0, 4, 9, 15)
"""Rows of --quick."""


def measure(row: Row, prompt: str, steps: int) -> dict[str, float]:
    field = TriplaneField(row.preset.radiance_field) if row.triplane else None
    background = SolidBackground(SolidBackgroundConfig(learnable=True)) if row.learned_background else None
    _, metrics = direct_fit(row.preset, parse_prompt(prompt), steps=steps, field=field, background=background,
                            grow=row.grow)
    return metrics


def table(results: dict[str, dict[str, dict[str, float]]], objects: list[str]) -> str:
    short = [" ".join(o.split()[1:3]) for o in objects]
    head = "| configuration | " + " | ".join(f"{s} PSNR | SSIM | IoU | s/step" for s in short) + " |"
    lines = [head, "|---" * (1 + 4 * len(objects)) + "|"]
    for name, per_object in results.items():
        cells = [f"{m['psnr']:.2f} | {m['ssim']:.4f} | {m['mask_iou']:.3f} | {m['s_per_step']:.3f}"
                 for m in (per_object[o] for o in objects)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 rows, 100 steps")
    p.add_argument("--objects", nargs="+", default=list(OBJECTS), help="catalog prompts")
    p.add_argument("--steps", type=int, default=None, help="training steps (300; --quick: 100)")
    p.add_argument("--out", type=Path, default=Path("docs/results/direct-fit.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (100 if args.quick else FAST.steps)
    selected = [r for i, r in enumerate(rows(steps)) if not args.quick or i in QUICK]
    start, results = time.perf_counter(), {}
    for row in selected:
        results[row.name] = {o: measure(row, o, steps) for o in args.objects}
        print(row.name, {o: round(m["psnr"], 2) for o, m in results[row.name].items()}, flush=True)
    command = shlex.join(["python", "benchmarks/direct_fit.py", *(argv if argv is not None else sys.argv[1:])])
    text = (f"# Direct fit to ground truth ({steps} steps, batch 2, 64x64, held-out 8 x 64x64)\n\n"
            f"`{command}` (torch {torch.__version__}, 1 thread, {time.perf_counter() - start:.0f} s)\n\n"
            f"{table(results, args.objects)}\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
