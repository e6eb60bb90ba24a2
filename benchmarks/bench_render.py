"""Field evaluations per view and render time: single-pass vs two-pass rendering, at equal image quality.

A hash-grid field with the sdi-paper encoding (16 levels x 2 features, T = 2^19, base 16) is fit by
regression to a catalog object (log density from its SDF with a 0.005-wide surface, albedo its colour),
so it has a trained field's sharp surface; an occupancy grid is updated from it. The same views are
rendered (textureless, one light, samples at bin centres so both see the same points) by

- before: ``single_pass``, 512 samples per ray, 32^3 occupancy grid, autograd normals (double backward);
- after: ``two_pass`` (early stop at T < 1e-4, ``--segments`` blocks), a ``--occupancy`` grid, and either
  autograd normals (isolates the sampling: PSNR vs before) or finite-difference normals (what sdi-paper uses).

Counts: "density pass" points are evaluated without gradients; "grad pass" points with forward + backward;
normals cost 6 density evaluations per shaded sample (central differences), 3 (forward differences) or one
double backward (autograd); "normal error" is their mean angle to the object's true normals.
Renders are PSNR-compared with the before one; ``--time-size`` times forward + backward of both.

    python benchmarks/bench_render.py                       # 512 x 512, 2 views (CPU: ~10 minutes)
    python benchmarks/bench_render.py --size 128 --fit-steps 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from sdi.scene.cameras import orbit_cameras
from sdi.scene.catalog import parse_prompt
from sdi.io import save_image
from sdi.scene.fields import HashGridField, SolidBackground, hash_grid_paper_config
from sdi.scene.ground_truth import render_ground_truth
from sdi.scene.occupancy import OccupancyGrid
from sdi.scene.renderer import render


def fit_field(prompt: str, steps: int, batch: int, device: str, log2_table: int = 19) -> HashGridField:
    """A hash-grid field regressed onto the catalog object's log density and albedo."""
    torch.manual_seed(0)
    obj = parse_prompt(prompt)
    field = HashGridField(hash_grid_paper_config(use_tcnn=False, log2_hashmap_size=log2_table)).to(device)
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for _ in range(steps):
        x = torch.rand(batch, 3, device=device) * 2 - 1
        x[: batch // 2] *= 0.55  # half of the points near the object
        sdf = obj.sdf(x)
        target = math.log(200.0) + torch.nn.functional.logsigmoid(-sdf / 0.005)
        out = field(x)
        loss = (torch.log(out.density + 1e-3) - target).square().mean()
        near = sdf.abs() < 0.05
        loss = loss + ((out.albedo - obj.albedo(x)).square().sum(-1) * near).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return field


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).square().mean().item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def views(size: int, n: int, device: str):
    azimuth = torch.linspace(30.0, 30.0 + 360.0, n + 1)[:n]
    azimuth = torch.remainder(azimuth + 180, 360) - 180
    cameras = orbit_cameras(torch.full((n,), 20.0), azimuth, 1.75, 50.0, size).to(device)
    return cameras, cameras.positions * 1.2


def normal_error_deg(normals: torch.Tensor, opacity: torch.Tensor, truth) -> float:
    """Mean angle (degrees) between the composited normals and the ground truth's, where both cover the pixel."""
    covered = ((opacity[:, 0] > 0.5) & (truth.mask[:, 0] > 0.5))
    cos = (torch.nn.functional.normalize(normals, dim=1) * truth.normals).sum(1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos[covered])).mean().item()


def render_counts(field, cameras, lights, occupancy, strategy, normals, segments, chunk,
                  truth) -> tuple[dict, torch.Tensor]:
    """One no-grad render (autograd normals still differentiate inside): counts per view, the normals' angle
    error against the ground truth, and the image."""
    with torch.no_grad():
        out = render(field, SolidBackground().to(lights.device), cameras, 512, "textureless", lights, None,
                     occupancy, chunk=chunk, normals=normals, perturb=False, strategy=strategy, segments=segments)
    n = len(cameras)
    shaded = out.n_shaded / n
    counts = {"strategy": strategy, "normals": normals, "occupancy": occupancy.resolution, "segments": segments,
              "evaluated_per_view": out.n_evaluated / n, "grad_pass_per_view": out.n_with_grad / n,
              "density_pass_per_view": (out.n_evaluated - out.n_with_grad) / n, "shaded_per_view": shaded,
              "normal_evals_per_view": {"finite_difference": 6, "forward_difference": 3}.get(normals, 1) * shaded,
              "normal_error_deg": normal_error_deg(out.normals, out.opacity, truth)}
    return counts, out.rgb


def time_render(field, cameras, lights, occupancy, strategy, normals, segments, repeats: int = 2) -> float:
    """Seconds of a forward + backward of the textureless render's mean, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        field.zero_grad()
        start = time.perf_counter()
        out = render(field, SolidBackground().to(lights.device), cameras, 512, "textureless", lights, None,
                     occupancy, normals=normals, perturb=False, strategy=strategy, segments=segments)
        (out.rgb.mean() + out.normals.square().mean()).backward()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="an orange torus")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--fit-batch", type=int, default=16384)
    p.add_argument("--log2-table", type=int, default=19)
    p.add_argument("--occupancy", default="32,64,128", help="grid sizes of the two-pass runs")
    p.add_argument("--segments", default="1,4,8", help="marching blocks of the two-pass runs")
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--time-size", type=int, default=0, help="also time forward + backward at this render size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--images", default=None, help="PNG of every render (rows) and view (columns)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    field = fit_field(args.prompt, args.fit_steps, args.fit_batch, args.device, args.log2_table)
    fit_s = time.perf_counter() - t0
    print(f"fit in {fit_s:.0f} s", flush=True)
    grids = {}
    for res in sorted({32, *map(int, args.occupancy.split(","))}):
        grids[res] = OccupancyGrid(resolution=res).to(args.device)
        grids[res].update(0, field.density, torch.Generator(args.device).manual_seed(0))
    cameras, lights = views(args.size, args.views, args.device)
    truth = render_ground_truth(parse_prompt(args.prompt), cameras)
    before, reference = render_counts(field, cameras, lights, grids[32], "single_pass", "autograd", 1, args.chunk,
                                      truth)
    images = [reference]
    rows = [{**before, "psnr_vs_before": float("inf")}]
    print_row(rows[0])
    configs = [(res, seg, "finite_difference") for res in map(int, args.occupancy.split(","))
               for seg in map(int, args.segments.split(","))]
    configs.append((configs[-1][0], configs[-1][1], "forward_difference"))  # half the normals' evaluations
    configs.append((configs[-1][0], configs[-1][1], "autograd"))  # the sampling alone, same normals as before
    for res, segments, normals in configs:
        counts, rgb = render_counts(field, cameras, lights, grids[res], "two_pass", normals, segments, args.chunk,
                                    truth)
        rows.append({**counts, "psnr_vs_before": psnr(rgb, reference)})
        images.append(rgb)
        print_row(rows[-1])
    result = {"prompt": args.prompt, "size": args.size, "views": args.views, "fit_steps": args.fit_steps,
              "fit_s": fit_s, "occupied_fraction": {r: g.mask.float().mean().item() for r, g in grids.items()},
              "rows": rows}
    if args.time_size:
        small, small_lights = views(args.time_size, 1, args.device)
        result["time_size"] = args.time_size
        result["seconds_fwd_bwd"] = {
            "before (single_pass, occ 32, autograd normals)": time_render(field, small, small_lights, grids[32],
                                                                        "single_pass", "autograd", 1),
            **{f"two_pass, occ {r}, 4 segments, {n} normals": time_render(
                field, small, small_lights, grids[r], "two_pass", n, 4)
               for r in map(int, args.occupancy.split(",")) for n in ("finite_difference", "forward_difference")},
        }
    print_table(result)
    if args.images:  # one row per render (before first), one column per view
        save_image(args.images, torch.cat([torch.cat(list(im), dim=-1) for im in images], dim=-2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def print_row(r: dict) -> None:
    print(" | ".join([r["strategy"], str(r["occupancy"]), str(r["segments"]), r["normals"],
                      f"{r['evaluated_per_view'] / 1e6:.2f}", f"{r['density_pass_per_view'] / 1e6:.2f}",
                      f"{r['grad_pass_per_view'] / 1e6:.2f}", f"{r['shaded_per_view'] / 1e3:.1f}",
                      f"{r['normal_evals_per_view'] / 1e6:.2f}", f"{r['psnr_vs_before']:.1f}",
                      f"{r['normal_error_deg']:.1f}"]), flush=True)


def print_table(result: dict) -> None:
    print(f"# {result['prompt']!r}, {result['views']} views of {result['size']}^2, 512 samples/ray; field fit "
          f"{result['fit_steps']} steps; occupied cells: "
          + ", ".join(f"{r}^3 {100 * f:.1f}%" for r, f in result["occupied_fraction"].items()))
    head = ("strategy", "occ", "seg", "normals", "M evaluated", "M density", "M grad", "k shaded", "M normal ev",
            "PSNR dB", "normal error deg")
    print(" | ".join(head))
    for r in result["rows"]:
        print_row(r)
    for name, seconds in result.get("seconds_fwd_bwd", {}).items():
        print(f"{result['time_size']}^2 forward + backward, {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
