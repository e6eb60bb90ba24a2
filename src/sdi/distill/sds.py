"""SDS (DreamFusion, Poole et al. 2022): random t, kappa ~ N(0, I) fresh every step.

- ``sds``: the paper's notation (Eq. 3 CFG, w = sigma(t), so the update is Eq. 10 with random kappa);
- ``sds_threestudio``: threestudio's dreamfusion-sd SDS exactly (``stable_diffusion_guidance.py``): integer
  t uniform in 20..980, threestudio's CFG form eps_c + s (eps_c - eps_u) without Perp-Neg, w = 1 - a(t),
  CFG 100, and its loss 0.5 sum((x0 - target)^2) / B, written in the one loss convention as the mean loss
  weighted by the element count. The baseline of the paper's Table 1 SDS row.
"""

from __future__ import annotations

from sdi.diffusion.guidance import Guidance
from sdi.distill.noise import RandomResampled
from sdi.distill.rule import Rule, Weighting
from sdi.distill.timesteps import RandomT, UniformT


def sds(cfg: float = 100.0, t_range: tuple[float, float] = (0.02, 0.98), weighting: Weighting = "sigma",
        guidance: Guidance = Guidance()) -> Rule:
    """SDS as the Eq. 10 update with random resampled kappa (DreamFusion uses CFG 100)."""
    return Rule("sds", RandomT(*t_range), RandomResampled(), cfg, weighting, guidance)


def sds_threestudio(cfg: float = 100.0, perp_neg: bool = True) -> Rule:
    """threestudio's SDS guidance (configs/dreamfusion-sd.yaml), Perp-Neg on by default."""
    guidance = Guidance(perp_neg="embeddings") if perp_neg else Guidance(anchor="cond")
    return Rule("sds-threestudio", UniformT(20, 980), RandomResampled(), cfg, "one_minus_alpha", guidance, "elements")
