"""The main job, timed: `sdi generate PROMPT` in fresh processes, for this tree and optionally another source tree
(``--baseline``, e.g. a worktree of an older commit) and several thread counts, alternating the runs so that all
see the same machine, with ``--busy N`` other processes spinning on the cores (a shared machine). Per run: wall
time of the command, training time and s/step (from its summary line), user and system CPU time, minor page
faults and peak resident memory of the process; then the medians per variant and their ratios to the first, and
whether the variants' checkpoints are bit-identical. The thread count goes by ``SDI_THREADS``, which a tree older
than ``--threads`` ignores: it runs torch's default, one thread per core (b9b4d92: 2 on 2 cores).

    python benchmarks/main_job.py                                       # this tree, 1 thread
    python benchmarks/main_job.py --baseline /tmp/before/src --repeat 2 # before / after
    python benchmarks/main_job.py --threads 1,2 --busy 1                # thread counts on a loaded machine

It trains for real (about 75 s per run on 2 quiet cores): a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red cube with white stripes"
CHILD = """
import atexit, json, os, resource, sys
def report():
    u = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["SDI_BENCH_RUSAGE"], "w") as f:
        json.dump(dict(user=u.ru_utime, system=u.ru_stime, minor_faults=u.ru_minflt, peak_rss_mb=u.ru_maxrss / 1024), f)
atexit.register(report)
from sdi.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
SUMMARY = re.compile(r"(\d+) steps in ([0-9.]+) s")


def run_once(src: Path, threads: int, prompt: str, out: Path, extra: list[str]) -> dict:
    """One `SDI_THREADS=N sdi generate PROMPT --out OUT` importing from ``src``: its figures."""
    usage = out.with_suffix(".rusage.json")
    env = {**os.environ, "PYTHONPATH": str(src), "SDI_BENCH_RUSAGE": str(usage), "SDI_THREADS": str(threads)}
    env.pop("OMP_NUM_THREADS", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "generate", prompt, "--out", str(out), "--quiet", *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sdi generate failed ({src}): {done.stderr.strip().splitlines()[-1:]}")
    found = SUMMARY.search(done.stdout)
    steps, train = (int(found.group(1)), float(found.group(2))) if found else (0, float("nan"))
    return dict(wall=wall, train=train, s_per_step=train / max(steps, 1), **json.loads(usage.read_text()))


def same_checkpoints(a: Path, b: Path) -> bool:
    """Whether two runs' checkpoints hold bit-identical tensors."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "checkpoint.safetensors")), load_file(str(b / "checkpoint.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def busy_processes(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on a core each until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


FIGURES = (("wall", "wall {:.1f} s"), ("train", "training {:.1f} s"), ("s_per_step", "{:.3f} s/step"),
           ("user", "user {:.1f} s"), ("system", "system {:.1f} s"), ("minor_faults", "{:,.0f} minor faults"),
           ("peak_rss_mb", "peak RSS {:.0f} MB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="another src/ folder, timed first")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="other processes spinning during the runs")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--steps", type=int, default=None, help="fewer steps than the preset's (quicker)")
    args = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parents[1] / "src"}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    variants = [(f"{name}, SDI_THREADS={n}", src, n) for name, src in trees.items()
                for n in (int(t) for t in args.threads.split(","))]
    extra = [] if args.steps is None else ["--steps", str(args.steps)]
    results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    print(f"{args.prompt!r}, {os.cpu_count()} CPUs, {args.busy} busy process(es), load {os.getloadavg()[0]:.2f}")
    spinning = busy_processes(args.busy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeat):
                for i, (label, src, threads) in enumerate(variants):
                    out = Path(tmp) / f"run{i}_{r}"
                    row = run_once(src, threads, args.prompt, out, extra)
                    results[label].append(row)
                    print(f"  {label}: " + ", ".join(fmt.format(row[k]) for k, fmt in FIGURES), flush=True)
            first = Path(tmp) / "run0_0"
            identical = {label: same_checkpoints(first, Path(tmp) / f"run{i}_0") for i, (label, _, _) in
                         enumerate(variants)}
    finally:
        for p in spinning:
            p.kill()
    print(f"load after: {os.getloadavg()[0]:.2f}; medians:")
    base = {k: statistics.median(row[k] for row in results[variants[0][0]]) for k, _ in FIGURES}
    for label, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k, _ in FIGURES}
        ratio = f", training time first / this: {base['train'] / med['train']:.2f}" if label != variants[0][0] else ""
        same = "" if label == variants[0][0] else f", checkpoint bit-identical to the first: {identical[label]}"
        print(f"  {label}: " + ", ".join(fmt.format(med[k]) for k, fmt in FIGURES) + ratio + same)


if __name__ == "__main__":
    main()
