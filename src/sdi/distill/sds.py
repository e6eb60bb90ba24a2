"""SDS (DreamFusion, Poole et al. 2022): random t, kappa ~ N(0, I) fresh every step."""

from __future__ import annotations

from sdi.distill.noise import RandomResampled
from sdi.distill.rule import Rule, Weighting
from sdi.distill.timesteps import RandomT


def sds(cfg: float = 100.0, t_range: tuple[float, float] = (0.02, 0.98), weighting: Weighting = "sigma") -> Rule:
    """SDS as the Eq. 10 update with random resampled kappa (DreamFusion uses CFG 100)."""
    return Rule("sds", RandomT(*t_range), RandomResampled(), cfg, weighting)
