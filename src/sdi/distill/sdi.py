"""SDI (Lukoianov et al. 2024): annealed t, kappa by prompt-conditioned DDIM inversion.

Two variants, both faithful to something real (see docs/paper-vs-reference.md):
- ``sdi_paper``: the paper's App. A. tau ~ U(0, 1/30); t 0.98 -> 0.2; int(10 t) inversion steps;
  entropy 0.3 sqrt(1 - a_t) N(0, I) added once, to the inverted x_t.
- ``sdi_reference``: the authors' threestudio code. tau ~ U(0, 0.1); t 0.98 -> 0.25; entropy
  0.3 x the DDPM posterior std added after every inversion step instead of once.
"""

from __future__ import annotations

from sdi.distill.noise import Cached, Inversion, WithEntropy, paper_inversion_steps
from sdi.distill.rule import Rule
from sdi.distill.timesteps import AnnealedT, GridT


def sdi_paper(cfg: float = 7.5, inversion_cfg: float = -7.5, entropy: float = 0.3, end: float = 0.2) -> Rule:
    """SDI with the paper's numbers."""
    noise = WithEntropy(Inversion(cfg=inversion_cfg), entropy)
    return Rule("sdi", AnnealedT(0.98, end, tau_max=1.0 / 30.0), noise, cfg)


def sdi_reference(cfg: float = 7.5, inversion_cfg: float = -7.5, entropy: float = 0.3) -> Rule:
    """SDI with the authors' code's numbers (threestudio configs/sdi.yaml)."""
    noise = Inversion(cfg=inversion_cfg, step_noise=entropy)
    return Rule("sdi-reference", AnnealedT(0.98, 0.25, tau_max=0.1), noise, cfg)


def sdi_grid(
    cfg: float = 7.5, inversion_cfg: float = -7.5, entropy: float = 0.0, inversion_stride: int | None = None
) -> Rule:
    """2D SDI on the DDIM grid: t walks the sampling grid, kappa by inversion up to the previous level,
    in int(10 t) steps, or in steps of ``inversion_stride`` timesteps (the grid's own stride is the
    most accurate: it retraces the path DDIM came down)."""
    steps = paper_inversion_steps if inversion_stride is None else (lambda t, T: max(round(t / inversion_stride), 1))
    noise = Inversion(cfg=inversion_cfg, steps=steps)
    return Rule("sdi", GridT(), WithEntropy(noise, entropy) if entropy else noise, cfg)


def sdi_cached(cfg: float = 7.5) -> Rule:
    """2D only: kappa = the previous step's prediction. On the DDIM grid this *is* DDIM (paper Sec. 4)."""
    return Rule("sdi-cached", GridT(), Cached(), cfg)
