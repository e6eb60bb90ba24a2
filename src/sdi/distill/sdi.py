"""SDI (Lukoianov et al. 2024): annealed t, kappa by prompt-conditioned DDIM inversion.

Two variants, both faithful to something real (see docs/paper-vs-reference.md):
- ``sdi_paper``: the paper's equations (App. A). tau ~ U(0, 1/30); t 0.98 -> 0.2 over the run; int(10 t)
  even inversion steps; Eq. 3 CFG; entropy 0.3 sqrt(1 - a_t) N(0, I) added once, to the inverted x_t;
  Eq. 10's forward call on sqrt(a_t) x0 + sqrt(1 - a_t) kappa; Perp-Neg, as App. A says.
- ``sdi_reference``: the authors' threestudio code, step for step (checked against their outputs in
  tests/test_reference_vectors.py). t = int(1000 (0.73 (1 - step / 10000) + 0.25)), delta = int(100 u);
  the leading 10-step inversion grid from -99 (at a(0)) with source labels; entropy 0.3 x the DDPM
  posterior std after every inversion step; the forward call on the inverted latent itself, labelled t;
  Perp-Neg with embedding interpolation; without Perp-Neg, their CFG form eps_c + s (eps_c - eps_u).
"""

from __future__ import annotations

from sdi.diffusion.guidance import Guidance
from sdi.distill.noise import Cached, Inversion, WithEntropy, paper_inversion_steps
from sdi.distill.rule import Rule
from sdi.distill.timesteps import AnnealedT, GridT, ThreestudioAnnealedT

PAPER_TAU_MAX = 1.0 / 30.0
"""The paper's jitter: kappa is estimated at t + tau, tau ~ U(0, 1/30) (App. A; the authors' code 0.1)."""
PERP_NEG = Guidance(perp_neg="embeddings")
"""Perp-Neg as the authors run it (threestudio's embedding interpolation), the default of both variants."""


def sdi_paper(cfg: float = 7.5, inversion_cfg: float = -7.5, entropy: float = 0.3, end: float = 0.2,
              guidance: Guidance = PERP_NEG, inversion_steps: int | None = None,
              tau_max: float = PAPER_TAU_MAX) -> Rule:
    """SDI with the paper's equations and numbers, Perp-Neg on (Eq. 3 CFG on priors without free text).
    ``inversion_steps``: a fixed number of even inversion steps instead of the paper's int(10 t); ``tau_max``:
    the bound of the jitter tau ~ U(0, tau_max) between t and kappa's level t + tau."""
    steps = paper_inversion_steps if inversion_steps is None else inversion_steps
    noise = WithEntropy(Inversion(cfg=inversion_cfg, steps=steps), entropy)
    return Rule("sdi", AnnealedT(0.98, end, tau_max=tau_max), noise, cfg, guidance=guidance)


def sdi_reference(cfg: float = 7.5, inversion_cfg: float = -7.5, entropy: float = 0.3, perp_neg: bool = True) -> Rule:
    """SDI as the authors' code computes it (threestudio configs/sdi.yaml, stable_diffusion_sdi_guidance.py)."""
    noise = Inversion(cfg=inversion_cfg, step_noise=entropy, path="leading", forward_on_inverted=True)
    guidance = PERP_NEG if perp_neg else Guidance(anchor="cond")
    return Rule("sdi-reference", ThreestudioAnnealedT(), noise, cfg, guidance=guidance)


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
