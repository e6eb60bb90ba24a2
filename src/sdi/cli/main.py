"""``sdi`` entry point: subcommands, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import sys

from sdi.cli import bench, catalog, export, generate, serve, twod
from sdi.train.checkpoint import CheckpointError
from sdi.train.loop import TrainingDiverged


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


SUBCOMMANDS = {"generate": generate, "2d": twod, "export": export, "catalog": catalog, "bench": bench, "serve": serve}

USER_ERRORS = (ValueError, FileNotFoundError, UserError, TrainingDiverged, CheckpointError)
"""Bad input or a failed run, reported as one line (by ``sdi serve`` too), never as a traceback."""


def error_line(command: str, error: BaseException) -> str:
    """The one line ``sdi COMMAND`` prints for ``error``."""
    return f"sdi {command}: error: {error}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdi", description="Score Distillation via Inversion (SDI)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(error_line(args.command, error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdi {args.command}: interrupted; outputs written so far are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
