"""Valid ranges of the numbers a run is given, in one place: the command line checks them before it imports
anything heavy, the library again where they enter it (``RunConfig``, a resumed ``config.json``)."""

from __future__ import annotations

import math

SEED_MAX = 2**32 - 1
"""Seeds run from 0 to 2**32 - 1 (what every generator we seed accepts, with room for ``seed + 1``)."""

RUN_MINIMUM = {"steps": 1, "resolution": 8, "batch": 1, "chunk": 1}
"""The least value of each count a run's preset can be overridden with."""


def check_seed(seed: int, name: str = "--seed") -> int:
    """``seed`` if it is a valid seed, else a one-line error giving the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be a whole number from 0 to {SEED_MAX}, got {seed!r}")
    return seed


def check_at_least(name: str, value: int, least: int) -> int:
    """``value`` if it is a whole number of at least ``least``, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
    return value


def check_finite(name: str, value: float) -> float:
    """``value`` if it is a finite number, else a one-line error (NaN and infinities are never valid settings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
