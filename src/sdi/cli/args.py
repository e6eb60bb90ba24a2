"""Argument parsing that says no fast: one-line errors, numbers checked by their argument types, and choices
read from a registry only when a value is checked, so that `sdi --help` and every error found before the
work starts never import torch."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable, Sequence

from sdi.errors import UserError
from sdi.limits import SEED_MAX


class UsageError(UserError):
    """A command line argparse refuses; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{message}; see `{prog} --help`")
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised as one-line ``UsageError`` (no usage block) for ``main``."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


class Registry(Sequence[str]):
    """The names of a registry (``module.attribute``, a dict or a sequence), imported on first use: when argparse
    checks a given value against it, or `sdi CMD --help` lists it. Give the argument a ``metavar``, or argparse
    lists the names (and imports the module) as soon as the argument is added."""

    def __init__(self, module: str, attribute: str, extra: tuple[str, ...] = ()):
        self.module, self.attribute, self.extra = module, attribute, extra
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            self._names = [*getattr(importlib.import_module(self.module), self.attribute), *self.extra]
        return self._names

    def __getitem__(self, index):
        return self.names()[index]

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()


def _parse(kind: Callable[[str], float], text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def finite(text: str) -> float:
    """A number that is neither NaN nor infinite."""
    value = _parse(float, text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    """A finite number above 0."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def at_least(least: int) -> Callable[[str], int]:
    """A whole number of at least ``least``."""

    def parse(text: str) -> int:
        value = _parse(int, text, "a whole number")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def seed(text: str) -> int:
    """A seed, 0 to SEED_MAX."""
    value = _parse(int, text, f"a whole number from 0 to {SEED_MAX}")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {SEED_MAX}, got {value}")
    return value
