"""How fast `sdi` says no: wall and CPU time of `sdi --help`, `sdi generate ""` and other early errors, each in a
fresh process, and the import time of ``sdi.cli.main`` (``python -X importtime``), optionally side by side with
another source tree (e.g. main before a change), alternating runs so that both see the same machine load.

    python benchmarks/cli_startup.py                            # this tree
    python benchmarks/cli_startup.py --baseline /work/main/src  # before / after, with their ratio

Prints medians over --repeat runs and the 1-minute load average before and after (wall times on a loaded
machine are not the quiet machine's; CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "sdi --help": ["--help"],
    'sdi generate ""': ["generate", ""],
    "sdi generate X --steps 0": ["generate", "a red cube", "--steps", "0"],
    "sdi generate X --seed 2**64": ["generate", "a red cube", "--seed", str(2**64)],
}
RUN = "import sys; from sdi.cli.main import main; sys.exit(main(sys.argv[1:]))"


def timed(src: Path, argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one `sdi argv` in a fresh interpreter importing from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:  # whatever a command writes goes away
        subprocess.run([sys.executable, "-c", RUN, *argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_time(src: Path) -> tuple[float, list[tuple[float, str]]]:
    """Cumulative import time of sdi.cli.main (s) and its five largest top-level imports, from -X importtime."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sdi.cli.main"], env=env,
                          capture_output=True, text=True)
    rows = [re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line) for line in done.stderr.splitlines()]
    rows = [(int(m.group(2)) / 1e6, len(m.group(3)), m.group(4)) for m in rows if m]
    total = next(t for t, _, name in rows if name == "sdi.cli.main")
    top = sorted(((t, name) for t, depth, name in rows if depth <= 3 and name != "sdi.cli.main"), reverse=True)
    return total, top[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="another src/ folder to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parents[1] / "src"}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    print(f"load average before: {os.getloadavg()[0]:.2f}  ({os.cpu_count()} CPUs)")
    for name, src in trees.items():
        total, top = import_time(src)
        print(f"import sdi.cli.main [{name}]: {total:.3f} s; largest: "
              + ", ".join(f"{mod} {t:.3f} s" for t, mod in top))
    for label, argv in COMMANDS.items():
        times = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, src in trees.items():  # alternate, so that both trees see the same load
                times[name].append(timed(src, argv))
        cells = []
        for name, runs in times.items():
            wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
            cells.append(f"{name}: wall {wall:.2f} s, CPU {cpu:.2f} s")
        ratio = ""
        if len(times) == 2:
            (_, a), (_, b) = times.items()
            ratio = f"  (baseline / this: wall x{statistics.median(w for w, _ in a) / statistics.median(w for w, _ in b):.1f})"
        print(f"{label:28} " + "; ".join(cells) + ratio)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
