"""What TensorBoard logging (sdi.train.logs.RunLog) costs a CPU training step, measured back to back.

One training state is driven through the `fast` preset's steps (64 x 64, 2 views, the embedded prior);
blocks of steps alternate between logging off and on (ABAB...), so both see the same load and the same
phase of training. Printed:

- in-thread cost: seconds spent inside ``RunLog.log`` / seconds of the logged steps (exact, load-proof);
- A/B: mean wall and process-CPU seconds per step, logging on / off (the CPU time includes tensorboardX's
  writer thread, which does the file I/O);
- images are logged every ``--image-every`` steps (the default, 25, is RunLog's).

    OMP_NUM_THREADS=1 python benchmarks/bench_logging.py --steps 160 --block 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdi.train.logs import IMAGE_EVERY, RunLog
from sdi.train.loop import new_state, training_step
from sdi.train.presets import FAST
from sdi.train.run import RunConfig, load_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red cube with white stripes")
    parser.add_argument("--steps", type=int, default=160, help="timed steps, half with logging")
    parser.add_argument("--block", type=int, default=8, help="steps per on / off block")
    parser.add_argument("--image-every", type=int, default=IMAGE_EVERY)
    args = parser.parse_args()
    preset = FAST
    denoiser = load_prior(RunConfig(args.prompt), preset)
    rule, state = preset.rule(), new_state(preset, seed=0)
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        log = RunLog(Path(folder), denoiser.decode, 0, preset.steps, image_every=args.image_every)
        training_step(state, preset, rule, denoiser, args.prompt)  # warm-up, untimed
        for index in range(args.steps):
            logging = (index // args.block) % 2 == 1
            wall, cpu = time.perf_counter(), time.process_time()
            info = training_step(state, preset, rule, denoiser, args.prompt)
            if logging:
                log.log(info)
            times[logging].append((time.perf_counter() - wall, time.process_time() - cpu))
        log.close()
        files = sum(p.stat().st_size for p in Path(folder).iterdir())
    report(times, log, files, args)


def report(times: dict, log: RunLog, files: int, args: argparse.Namespace) -> None:
    wall = {k: statistics.mean(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.mean(c for _, c in v) for k, v in times.items()}
    logged = sum(t for t, _ in times[True])
    print(f"fast preset, {args.steps} steps ({len(times[True])} logged), images every {args.image_every} steps, "
          f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"in-thread logging cost: {log.seconds:.4f} s of {logged:.2f} s logged steps = "
          f"{100 * log.seconds / logged:.2f}% ({1000 * log.seconds / len(times[True]):.2f} ms/step)")
    print(f"A/B wall s/step: off {wall[False]:.4f}, on {wall[True]:.4f}, on/off {wall[True] / wall[False]:.4f}")
    print(f"A/B CPU  s/step: off {cpu[False]:.4f}, on {cpu[True]:.4f}, on/off {cpu[True] / cpu[False]:.4f}")
    print(f"event files: {files / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
