"""``sdi`` entry point: subcommands, and one-line errors for bad input and for faults of the machine.

Only the standard library is imported before a subcommand runs, so `sdi --help` and an argument error
answer at once; each subcommand imports torch (and diffusers, Ray) when it starts its work.
"""

from __future__ import annotations

import os
import sys

from sdi.cli import bench, catalog, export, generate, serve, twod
from sdi.cli.args import Parser, UsageError, at_least
from sdi.errors import UserError
from sdi.threads import DEFAULT_THREADS, configure_threads

SUBCOMMANDS = {"generate": generate, "2d": twod, "export": export, "catalog": catalog, "bench": bench, "serve": serve}

EXTRAS = {"diffusers": "sd", "transformers": "sd", "huggingface_hub": "sd", "accelerate": "sd", "ray": "bench"}
"""Optional packages, by the extra of pyproject.toml that installs them."""


def build_parser() -> Parser:
    parser = Parser(prog="sdi", description="Score Distillation via Inversion (SDI)",
                    epilog="errors are one line; set SDI_TRACEBACK=1 to see where one came from")
    parser.add_argument("--threads", type=at_least(1), default=None, metavar="N",
                        help=f"CPU threads of torch (default: $SDI_THREADS, else {DEFAULT_THREADS}; see README, Threads)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return report(error.prog, str(error))
    try:
        configure_threads(args.threads)
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"sdi {args.command}: interrupted; outputs written so far are intact", file=sys.stderr)
        return 130
    except Exception as error:
        message = one_line(error)
        if message is None or os.environ.get("SDI_TRACEBACK"):
            raise
        return report(f"sdi {args.command}", message)


def report(prog: str, message: str) -> int:
    """Print ``message`` as one line on stderr; exit status 2."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def error_line(command: str, error: Exception) -> str | None:
    """The one line ``sdi COMMAND`` prints for ``error`` (``sdi serve`` shows the same); None for a bug."""
    message = one_line(error)
    return None if message is None else f"sdi {command}: error: {' '.join(message.split())}"


def one_line(error: Exception) -> str | None:
    """The message of an error that is bad input or a fault of the machine; None for a bug (a traceback)."""
    if isinstance(error, (UserError, ValueError)) or _diverged(error):
        return str(error) or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and error.name in EXTRAS:
        return f"{error.name} is not installed: pip install 'sdi[{EXTRAS[error.name]}]'"
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and _out_of_memory(str(error))):
        first = (str(error).strip().splitlines() or ["MemoryError"])[-1][:200]
        return f"out of memory ({first}); lower --resolution or --batch, or render in chunks with --chunk"
    if isinstance(error, OSError):  # writes say what and how much (sdi.errors.WriteError); others say where
        return f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
    return None


def _diverged(error: Exception) -> bool:
    """A TrainingDiverged (NaN loss), looked up only if the training loop was imported (it imports torch)."""
    loop = sys.modules.get("sdi.train.loop")
    return loop is not None and isinstance(error, loop.TrainingDiverged)


def _out_of_memory(text: str) -> bool:
    return "out of memory" in text.lower() or "can't allocate memory" in text.lower()


if __name__ == "__main__":
    sys.exit(main())
