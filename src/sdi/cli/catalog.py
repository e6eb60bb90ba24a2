"""List the vocabulary of the procedural catalog (what the embedded prior can generate)."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sdi.scene.catalog import vocabulary

    for kind, words in vocabulary().items():
        print(f"{kind:>14}: {', '.join(words)}")
    print('example: sdi generate "a red cube with white stripes"')
    return 0
