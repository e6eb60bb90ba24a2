"""Hash-grid throughput: forward + backward points per second, pure PyTorch (autograd, fused, compiled) vs tinycudann.

The sdi-paper encoding (16 levels x 2 features, T = 2^19, base 16, growth 1.447) with its 64-wide MLP
(``HashGridField``), on random points in the box; the backward is of a random projection of density and
albedo, w.r.t. the parameters only (as in training with finite-difference normals). Variants:

- ``autograd``: the per-level reference through plain autograd (``HashGridEncoding(fused=False)``);
- ``fused``: the custom backward that recomputes corners (``fused_hash_encode``), eager;
- ``compiled``: ``fused`` under ``torch.compile(fullgraph=True, dynamic=True)`` (``compile_field``);
- ``tcnn``: tinycudann's HashGrid (CUDA only, when it imports);
- ``normals-autograd`` / ``normals-fd`` / ``normals-fd-compiled`` / ``normals-fd-forward``: the normals of
  textureless shading and a loss on them, forward + backward, per point: double backward through the autograd
  encoding, or central finite differences (6 density evaluations) through the fused one, eager or compiled, or
  forward differences (3, plus the centre density, which a render has already) eager.

    python benchmarks/bench_hashgrid.py --points 1048576            # GPU
    python benchmarks/bench_hashgrid.py --tiny                      # CPU smoke run, small table
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sdi.scene.compiled import compile_field
from sdi.scene.fields import HashGridField, hash_grid_paper_config
from sdi.scene.renderer import field_normals


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_field(variant: str, log2_table: int, device: torch.device, backend: str = "inductor",
               levels: int = 16) -> HashGridField:
    torch.manual_seed(0)
    config = hash_grid_paper_config(log2_hashmap_size=log2_table, n_levels=levels, use_tcnn=variant == "tcnn")
    field = HashGridField(config)
    field = field.to(device)
    if variant == "tcnn" and field.tcnn_encoding is None:
        raise RuntimeError("tinycudann is not available")
    if field.encoding is not None:
        field.encoding.fused = variant != "autograd"
    if variant in ("compiled", "normals-fd-compiled"):
        compile_field(field, backend=backend)
    return field


def pass_loss(variant: str, field: HashGridField, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The loss whose forward + backward one pass times: of the field's outputs, or of its normals."""
    if variant.startswith("normals-"):
        method = {"normals-autograd": "autograd", "normals-fd-forward": "forward_difference"}.get(variant,
                                                                                              "finite_difference")
        density = field.density(x) if method == "forward_difference" else None  # the renderer has it already
        return (field_normals(field, x, method, density) * weights[1:]).mean()
    out = field(x)
    return (out.density * weights[0]).mean() + (out.albedo * weights[1:]).mean()


def throughput(variant: str, points: int, iters: int, log2_table: int, device: torch.device,
               backend: str = "inductor", levels: int = 16) -> dict:
    """Median seconds of one forward + backward and points per second, after two warm-up passes."""
    field = make_field(variant, log2_table, device, backend, levels)
    x = torch.rand(points, 3, device=device) * 2 - 1
    weights = torch.randn(4, device=device)
    times = []
    for i in range(iters + 2):
        sync(device)
        start = time.perf_counter()
        pass_loss(variant, field, x, weights).backward()
        sync(device)
        if i >= 2:  # the first passes compile / warm up
            times.append(time.perf_counter() - start)
        field.zero_grad(set_to_none=True)
    seconds = sorted(times)[len(times) // 2]
    return {"variant": variant, "points": points, "s_per_pass": seconds, "points_per_s": points / seconds}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--points", type=int, default=2**20)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--log2-table", type=int, default=19)
    p.add_argument("--levels", type=int, default=16)
    p.add_argument("--variants", default="autograd,fused,compiled,tcnn,normals-autograd,normals-fd,normals-fd-compiled,"
                                       "normals-fd-forward")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled variant")
    p.add_argument("--tiny", action="store_true",
                   help="4k points, 4 levels of T = 2^14, 1 timed pass, 5 variants, compiled with the 'eager' "
                        "backend (graph capture only: proves fullgraph=True traces)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.points, args.iters, args.log2_table, args.levels, args.compile_backend = 2**12, 1, 14, 4, "eager"
        args.variants = "autograd,fused,compiled,tcnn,normals-fd-forward"
    device = torch.device(args.device)
    rows: list[dict] = []
    result = {"device": str(device), "threads": torch.get_num_threads(), "log2_table": args.log2_table,
              "levels": args.levels, "compile_backend": args.compile_backend, "rows": rows}
    for variant in args.variants.split(","):
        if variant == "tcnn" and device.type != "cuda":
            rows.append({"variant": variant, "error": "tinycudann needs CUDA"})
        else:
            try:
                rows.append(throughput(variant, args.points, args.iters, args.log2_table, device,
                                       args.compile_backend, args.levels))
            except Exception as error:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                reason = str(error).splitlines()[0][:200] if str(error) else ""
                rows.append({"variant": variant, "error": f"{type(error).__name__}: {reason}"})
        r = rows[-1]
        if "error" in r:
            print(f"{r['variant']:>19}: {r['error']}", flush=True)
        else:
            print(f"{r['variant']:>19}: {r['points_per_s'] / 1e6:8.3f} M points/s ({r['s_per_pass'] * 1e3:.1f} ms "
                  f"per forward + backward of {r['points']} points)", flush=True)
        if args.json:  # after every row: a run stopped at its time limit keeps what it measured
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
