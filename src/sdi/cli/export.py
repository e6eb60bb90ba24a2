"""Redo the exports (turntable, views, mesh) of a run from its checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdi.cli.generate import (
    add_device_argument,
    add_mesh_arguments,
    describe_mesh,
    export,
    mesh_options,
    with_device,
)
from sdi.io import atomic_write_json
from sdi.train.run import read_config


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="folder made by `sdi generate`")
    add_device_argument(parser)
    add_mesh_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = with_device(read_config(args.run_dir), args.device)
    written = export(args.run_dir, config, mesh_options(args))
    metrics_path = args.run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    atomic_write_json(metrics_path, {**metrics, "exports": written})
    print(f"exported {args.run_dir}: " + ", ".join(written) + "; " + describe_mesh(written["mesh"]))
    return 0
