"""Re-score the runs of an ``sdi bench 3d`` folder from their checkpoints, without retraining.

For every ok row of OUT/runs.csv, ``evaluate_run`` on the run's checkpoint (``runs_dir/<key>``) recomputes
the quality metrics (PSNR, SSIM, mask IoU, detail ratio, masked detail ratio, saturation error, diverged);
training columns (train_s, denoiser_calls, peak_memory_mb, wall_s) are kept. Then runs.csv, report.md,
per-object/report.md and the plots are rewritten with the grid's original command and wall time (read
from the old report.md), and a "Re-scored" section is appended: the largest change of every metric
that was there before, and the masked detail ratio per object at erosions of 1, 2 and 3 pixels.

    python benchmarks/rescore_3d.py docs/results/generate-sdi-vs-sds
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from sdi import metrics
from sdi.bench.evaluate import evaluate_run
from sdi.bench.report import mean_std
from sdi.bench.runner import read_runs, write_runs
from sdi.bench.suites import METHODS_3D, write_suite_report

QUALITY = ("psnr", "ssim", "mask_iou", "detail_ratio", "masked_detail_ratio", "saturation_error", "diverged")
EROSIONS = (1, 2, 3)


def run_dir_of(row: dict, out: Path) -> Path:
    """The row's training folder: ``params.runs_dir/<key>`` when it exists, else ``OUT/runs/<key>``."""
    recorded = Path(json.loads(row["params"]).get("runs_dir", out / "runs")) / row["key"]
    return recorded if recorded.is_dir() else out / "runs" / row["key"]


@torch.no_grad()
def masked_detail_by_erosion(run_dir: Path, erosions=EROSIONS, size: int = 64, views: int = 8) -> dict:
    """Means over ``evaluate_scene``'s views, per erosion k (pixels): ``masked_detail_ratio`` (key k) and the
    ground truth's high-frequency energy inside the eroded mask (key ``("truth", k)``), the ratio's denominator."""
    from sdi.export.run_outputs import render_views
    from sdi.scene.cameras import held_out_cameras
    from sdi.scene.catalog import parse_prompt
    from sdi.scene.ground_truth import render_ground_truth
    from sdi.train.run import read_config, restore_state

    config = read_config(run_dir)
    state, _ = restore_state(run_dir, config.resolved_preset(), config.seed)
    cameras = held_out_cameras(views, size)
    truth = render_ground_truth(parse_prompt(config.prompt), cameras)
    state.scene.field.eval()
    rgb = torch.nan_to_num(render_views(state.scene, cameras).rgb.float(), nan=1.0).clamp(0, 1)
    out = {k: metrics.masked_detail_ratio(rgb, truth.rgb, truth.mask, erode=k).mean().item() for k in erosions}
    for k in erosions:
        inside = metrics.erode_mask(truth.mask, k)
        out["truth", k] = metrics.high_frequency_energy(truth.rgb, mask=inside).mean().item()
    return out


def grid_facts(report: Path) -> tuple[str, float, int]:
    """(command, wall time s, workers) of the grid, from the report ``sdi bench`` wrote."""
    text = report.read_text()
    command = re.search(r"Produced by:\n\n```\n(.*?)\n```", text, re.S)
    wall = re.search(r"Wall time of the whole grid: ([\d.]+) s .*? with (\d+) workers", text)
    if not command or not wall:
        raise ValueError(f"{report} does not look like an `sdi bench 3d` report (no command or wall time line)")
    return command.group(1), float(wall.group(1)), int(wall.group(2))


def _cell(x: float) -> str:
    return f"{x:.4g}"


def rescore_section(old: dict, new: dict, erosion: dict, folder: str) -> list[str]:
    """Markdown: how the re-scored metrics differ from the recorded ones; masked detail per erosion."""
    lines = ["## Re-scored", "", f"Quality metrics recomputed from the checkpoints by `python benchmarks/rescore_3d.py "
             f"{folder}` (no retraining; training columns kept). Largest change per metric over the runs:", ""]
    for m in QUALITY:
        pairs = [(old[k][m], new[k][m]) for k in new if isinstance(old[k].get(m), float)]
        lines.append(f"- {m}: " + (f"max |new - old| = {max(abs(a - b) for a, b in pairs):.3g} over {len(pairs)} runs"
                                   if pairs else "not recorded before (new)"))
    lines += ["", "Masked detail ratio by erosion of the ground-truth mask (pixels; 3 = the blur radius, the "
              "reported value), mean ± sample std over seeds; last columns: the ground truth's own high-frequency "
              "energy inside the eroded mask (the ratio's denominator, mean over views; near 0 = an untextured "
              "object, where the ratio measures spurious structure rather than detail):", "",
              "| prompt | method | " + " | ".join(f"erode {k}" for k in EROSIONS) + " | "
              + " | ".join(f"truth HF, erode {k}" for k in EROSIONS) + " |",
              "|---|---|" + "---|" * 2 * len(EROSIONS)]
    cells: dict[tuple[str, str], list[dict]] = {}
    for k, row in new.items():
        cells.setdefault((row["prompt"], row["method"]), []).append(erosion[k])
    for (prompt, method), values in cells.items():
        stats = [mean_std(v[k] for v in values) for k in EROSIONS]
        truth = [_cell(values[0]["truth", k]) for k in EROSIONS]
        lines.append(f"| {prompt} | {method} | " + " | ".join(f"{_cell(m)} ± {_cell(s)}" if not math.isnan(s)
                                                              else _cell(m) for m, s, *_ in stats)
                     + " | " + " | ".join(truth) + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an `sdi bench 3d` output folder (runs.csv, report.md, runs/)")
    args = parser.parse_args(argv)
    out = args.out
    command, elapsed, workers = grid_facts(out / "report.md")
    old = read_runs(out / "runs.csv")
    new, erosion = {}, {}
    for key, row in old.items():
        if row["status"] != "ok" or row["suite"] != "3d":
            new[key] = row
            continue
        run_dir = run_dir_of(row, out)
        new[key] = {**row, **evaluate_run(run_dir)}
        erosion[key] = masked_detail_by_erosion(run_dir)
        print(key, {m: round(new[key][m], 5) for m in QUALITY}, file=sys.stderr)
    write_runs(out / "runs.csv", new.values())
    # Report order as `sdi bench` writes it (the grid's: objects, then methods), not runs.csv's completion order.
    prompts = list(dict.fromkeys(r["prompt"] for r in new.values()))
    methods = list(METHODS_3D)
    rows = sorted(new.values(), key=lambda r: (prompts.index(r["prompt"]), methods.index(r["method"])
                                               if r["method"] in methods else len(methods)))
    path = write_suite_report("3d", rows, out, command, elapsed, workers)
    scored = {r["key"]: r for r in rows if r["key"] in erosion}
    path.write_text(path.read_text().rstrip() + "\n\n" + "\n".join(rescore_section(old, scored, erosion, str(out))))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
