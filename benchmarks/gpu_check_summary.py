"""Merge the parts of ``gpu_check.sh`` into gpu_check.json (every field present, null where not measured) and
gpu_check.md (the summary for the README).

    python benchmarks/gpu_check_summary.py OUT_DIR --command "benchmarks/gpu_check.sh" [--tiny]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
from pathlib import Path

SPEED_FIELDS = ("preset", "unet", "s_per_iteration", "unet_calls_per_iteration", "unet_images_per_iteration",
                "peak_memory_gb", "projection_10k_steps_min", "error")
GENERATE_FIELDS = ("preset", "steps", "render_resolution", "num_samples", "device", "dtype", "hash_encoding", "render",
                   "s_per_step", "s_per_step_steady", "projection_10k_steps_min", "stages_s_per_step",
                   "unet_calls_per_step", "unet_images_per_step", "peak_memory_gb", "syncs_in_one_step",
                   "samples_per_view", "build_model_s", "export", "error")
STAGES = ("render_forward", "vae_encode", "unet_inversion", "inversion_total", "unet_forward", "backward", "optimizer",
          "occupancy_update", "regularizers", "other")
HASHGRID_FIELDS = ("variant", "points", "points_per_s", "s_per_pass", "error")
HASHGRID_VARIANTS = ("autograd", "fused", "compiled", "tcnn", "normals-autograd", "normals-fd",
                     "normals-fd-compiled", "normals-fd-forward")
ENVIRONMENT_FIELDS = ("gpu", "torch", "cuda", "python", "diffusers", "transformers", "cpu_threads")
PARTS = ("hashgrid", "generate", "speed")


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def environment() -> dict:
    env = dict.fromkeys(ENVIRONMENT_FIELDS)
    env["python"] = platform.python_version()
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, cpu_threads=torch.get_num_threads(),
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:
        pass
    for name in ("diffusers", "transformers"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return env


def speed_rows(data: dict | None, presets: list[str], error: str | None) -> list[dict]:
    """One row per preset x (eager, compiled), in that order, from bench_speed.py's JSON."""
    found = {(r.get("rule"), r.get("unet")): r for r in (data or {}).get("rows", [])}
    rows = []
    for mode in ("eager", "compiled"):
        for name in presets:
            r = found.get((name, mode), {"error": error or "not run (time limit or earlier failure)"})
            rows.append({"preset": name, "unet": mode, "s_per_iteration": r.get("s_per_it"),
                         "unet_calls_per_iteration": r.get("calls"), "unet_images_per_iteration": r.get("evals"),
                         "peak_memory_gb": r.get("peak_gb"), "projection_10k_steps_min": r.get("min_10k"),
                         "error": r.get("error")})
    return rows


def generate_part(data: dict | None, error: str | None) -> dict:
    out = {k: (data or {}).get(k) for k in GENERATE_FIELDS}
    out["stages_s_per_step"] = {k: ((data or {}).get("stages_s_per_step") or {}).get(k) for k in STAGES}
    out["error"] = None if data else (error or "not run")
    return out


def hashgrid_rows(data: dict | None, error: str | None) -> list[dict]:
    found = {r.get("variant"): r for r in (data or {}).get("rows", [])}
    return [{k: found.get(v, {"variant": v, "error": error or "not run"}).get(k) for k in HASHGRID_FIELDS}
            | {"variant": v} for v in HASHGRID_VARIANTS]


def part_errors(out: Path) -> dict[str, dict]:
    """Exit status and wall time of each part (parts.jsonl, one line per part) and a reason when it failed."""
    parts = {p: {"rc": None, "wall_s": None, "log": f"{p}.log"} for p in PARTS}
    for line in (out / "parts.jsonl").read_text().splitlines() if (out / "parts.jsonl").exists() else []:
        record = json.loads(line)
        parts[record["part"]].update(rc=record["rc"], wall_s=record["wall_s"])
    for name, record in parts.items():
        rc = record["rc"]
        record["error"] = (None if rc == 0 else "not run" if rc is None else
                           f"timed out (rc {rc})" if rc in (124, 137) else
                           f"failed (rc {rc}): see {record['log']} in parts.tar.gz")
    return parts


def summarise(out: Path, command: str, tiny: bool, presets: list[str], wall_s: float | None) -> dict:
    parts = part_errors(out)
    result = {
        "schema": 1, "command": command, "tiny": tiny, "wall_s": wall_s, "environment": environment(),
        "parts": parts,
        "speed": {"render": (load(out / "speed.json") or {}).get("settings", {}).get("render"),
                  "rows": speed_rows(load(out / "speed.json"), presets, parts["speed"]["error"])},
        "generate": generate_part(load(out / "generate.json"), parts["generate"]["error"]),
        "hashgrid": {"rows": hashgrid_rows(load(out / "hashgrid.json"), parts["hashgrid"]["error"]),
                     "points": (load(out / "hashgrid.json") or {}).get("rows", [{}])[0].get("points")},
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(r: dict) -> str:
    env, g = r["environment"], r["generate"]
    lines = [f"# GPU check ({'tiny, CPU' if r['tiny'] else env['gpu'] or 'no GPU'})", "",
             f"`{r['command']}`: {fmt(r['wall_s'])} s; torch {env['torch']}, CUDA {env['cuda']}, "
             f"diffusers {env['diffusers']}, transformers {env['transformers']}", "",
             "## (a) bench_speed.py, whole training step (renderer included), render "
             f"{fmt(r['speed']['render'])}", "",
             "| preset | UNet | s/iter | UNet calls/iter | UNet images/iter | peak GB | 10k steps (min) |",
             "|---|---|---|---|---|---|---|"]
    for row in r["speed"]["rows"]:
        if row["error"]:
            lines.append(f"| {row['preset']} | {row['unet']} | {row['error']} | | | | |")
        else:
            lines.append(f"| {row['preset']} | {row['unet']} | {fmt(row['s_per_iteration'])} | "
                         f"{fmt(row['unet_calls_per_iteration'])} | {fmt(row['unet_images_per_iteration'])} | "
                         f"{fmt(row['peak_memory_gb'])} | {fmt(row['projection_10k_steps_min'])} |")
    lines += ["", f"## (b) sdi generate, preset {g['preset']}, {fmt(g['steps'])} steps at "
              f"{fmt(g['render_resolution'])}", ""]
    if g["error"]:
        lines.append(f"error: {g['error']}")
    else:
        syncs = g["syncs_in_one_step"] or {}
        lines += [f"{fmt(g['s_per_step'])} s/step ({fmt(g['s_per_step_steady'])} steady; 10k steps: "
                  f"{fmt(g['projection_10k_steps_min'])} min), peak {fmt(g['peak_memory_gb'])} GB, "
                  f"{fmt(g['unet_calls_per_step'])} UNet calls/step, {syncs.get('count', '-')} syncs in one step "
                  f"({syncs.get('method', '-')}); hash encoding: {g['hash_encoding']}; samples per view: "
                  f"{json.dumps(g['samples_per_view'])}", "", "| stage | s/step |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in g["stages_s_per_step"].items()]
        lines += ["", "(inversion_total includes unet_inversion; other = the step's time outside the timed stages)"]
    lines += ["", f"## (c) hash grid forward + backward ({fmt(r['hashgrid']['points'])} points)", "",
              "| variant | M points/s | ms/pass |", "|---|---|---|"]
    for row in r["hashgrid"]["rows"]:
        if row["error"]:
            lines.append(f"| {row['variant']} | {row['error']} | |")
        else:
            lines.append(f"| {row['variant']} | {fmt(row['points_per_s'] / 1e6)} | {fmt(row['s_per_pass'] * 1e3)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--command", default="benchmarks/gpu_check.sh")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--presets", default="sds-threestudio,sdi-paper,sdi-reference")
    p.add_argument("--wall-s", type=float, default=None)
    args = p.parse_args(argv)
    result = summarise(args.out, args.command, args.tiny, args.presets.split(","), args.wall_s)
    print((args.out / "gpu_check.md").read_text())
    return result


if __name__ == "__main__":
    main()
