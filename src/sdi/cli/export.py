"""Redo the exports (turntable, views, mesh) of a run from its checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdi import run_folder
from sdi.cli.generate import (add_device_argument, add_mesh_arguments, describe_mesh, mesh_options, with_device,
                              write_outputs)


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="folder made by `sdi generate`")
    add_device_argument(parser)
    add_mesh_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sdi.train.run import read_config

    config = with_device(read_config(args.run_dir), args.device)
    metrics = run_folder.read_json(args.run_dir / run_folder.METRICS)  # {} when missing or unreadable
    written = write_outputs(args.run_dir, config, metrics, mesh_options(args))["exports"]
    print(f"exported {args.run_dir}: " + ", ".join(written) + "; " + describe_mesh(written["mesh"]))
    return 0
