"""A local web page to start, watch and download runs (Gradio; needs `pip install 'sdi[web]'`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                             "network, where anyone who reaches it can start runs)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder of the runs (default runs/)")
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for a bad port or a runs path that is not a folder, before anything heavy is imported."""
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.runs.exists() and not args.runs.is_dir():
        raise ValueError(f"--runs {args.runs} is not a folder")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    try:
        from sdi.web.app import serve  # gradio is imported only here
    except ImportError as error:
        raise ValueError(f"sdi serve needs the web extra ({error}): pip install 'sdi[web]'") from None
    if not is_loopback(args.host):
        print(f"note: listening on {args.host}: anyone who can reach this machine can start runs", file=sys.stderr)
    serve(args.runs, args.host, args.port)
    return 0
