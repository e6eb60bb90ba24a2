"""The effect on the SDI target of each difference between the authors' code and the paper, one at a time.

On the tiny random-weight SD of ../shared/reference, for every SDI case of the golden vectors (same x0, t, delta,
view and recorded draws), run ``sdi_reference`` (which reproduces the authors' code: tests/test_reference_vectors.py)
and then the same rule with ONE of its choices replaced by the paper's (or by the variant named), and print
relL2 = |target_variant - target_reference| / |target_reference| per case, grouped by t; for the SDS cases
(B = 1) the same for ``sds_threestudio``'s grad. The rows are the differences of docs/paper-vs-reference.md.

    python benchmarks/reference_differences.py        # about 1 min of CPU
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reference_vectors import case_cameras, case_rule, fill_embeddings, load_vectors, recorded_draws  # noqa: E402

from sdi.diffusion.ddim import ddim_invert  # noqa: E402
from sdi.diffusion.guidance import Guidance  # noqa: E402
from sdi.diffusion.noise_sampler import ReplayNoise  # noqa: E402
from sdi.diffusion.parametrization import eps_from_x0  # noqa: E402
from sdi.diffusion.schedules import Grid, leading_inversion_levels, source_grid  # noqa: E402
from sdi.distill.noise import Inversion, Noise, paper_inversion_steps  # noqa: E402
from sdi.distill.rule import distill_update  # noqa: E402
from sdi.distill.sdi import sdi_paper  # noqa: E402
from sdi.distill.timesteps import Levels  # noqa: E402


class EvenGridSourceLabels(Inversion):
    """Item 1 alone: int(10 (t + delta)) even strides from the clean latent, labels and a(0) as the authors'."""

    def grid(self, ac, t_kappa, t):
        n = paper_inversion_steps(t_kappa, len(ac))
        return source_grid(ac, torch.linspace(0, t_kappa, n + 1).round().long())


class DestinationLabels(Inversion):
    """Item 2 alone: the leading grid, the UNet labelled with the destination, the clean latent at alpha 1."""

    def grid(self, ac, t_kappa, t):
        levels = leading_inversion_levels(len(ac), t, t_kappa)
        return Grid(levels[1:], torch.cat([torch.ones(1), ac[levels[1:]]]))


class EntropyOnce(Inversion):
    """Item 3 alone: no noise between steps, 0.3 sqrt(1 - a) z added once to x(t + delta), z the last recorded
    draw."""

    def __call__(self, q):
        ac = q.denoiser.alphas_cumprod
        x = ddim_invert(q.eps_fn(self.cfg), q.x0, self.grid(ac, q.t, q.t_update))
        x = x + self.step_noise * (1 - ac[q.t]).sqrt() * q.noise(q.x0)
        return Noise(eps_from_x0(x, q.x0, ac[q.t]), baseline=eps_from_x0(x, q.x0, ac[q.t_update]), x_t=x)


def variants(case) -> dict[str, tuple[object, list]]:
    """name -> (rule, draws) for the differences that apply to ``case``."""
    rule, draws = case_rule(case), [d for d in recorded_draws(case, TENSORS) if d.ndim == 4][-len(case_steps(case)):]
    base = dict(cfg=rule.noise.cfg, step_noise=rule.noise.step_noise, path="leading", forward_on_inverted=True)
    out = {
        "1 even int(10 t) grid (source labels kept)": (replace(rule, noise=EvenGridSourceLabels(**base)), draws),
        "2 destination labels, clean at alpha 1": (replace(rule, noise=DestinationLabels(**base)), draws),
        "3 entropy once at the end": (replace(rule, noise=EntropyOnce(**base)), draws[-1:]),
        "4 forward: Eq. 10 re-noising at t": (replace(rule, noise=replace(rule.noise, forward_on_inverted=False)),
                                              draws),
    }
    if case["settings"]["use_perp_neg"]:
        by_predictions = replace(rule, guidance=Guidance(perp_neg="predictions"))
        out["6 Perp-Neg by prediction interpolation"] = (by_predictions, draws)
        out["6' no Perp-Neg (Eq. 3 CFG)"] = (replace(rule, guidance=Guidance()), draws)
    else:
        out["5 Eq. 3 CFG instead of eps_c + s (eps_c - eps_u)"] = (replace(rule, guidance=Guidance()), draws)
    g = torch.Generator().manual_seed(0)
    fresh = [torch.randn(d.shape, generator=g) for d in draws]
    out["- the same code, other entropy draws (scale of sampling noise)"] = (rule, fresh)
    perp = Guidance(perp_neg="embeddings") if case["settings"]["use_perp_neg"] else Guidance()
    out["all: sdi_paper at the same t, t + delta"] = (sdi_paper(guidance=perp), draws[-1:])
    return out


def case_steps(case):
    t, end = int(TENSORS[f"{case['id']}_t"]), int(TENSORS[f"{case['id']}_t_plus_delta"])
    return leading_inversion_levels(1000, t, end)[1:]


def target(prior, case, rule, draws, x0, prompt, cameras):
    k = case["id"]
    levels = Levels(int(TENSORS[f"{k}_t"]), int(TENSORS[f"{k}_t_plus_delta"]))
    return distill_update(rule, prior, x0, levels, prompt, ReplayNoise(draws), {}, cameras).target


def main() -> None:
    from sdi.priors.stable_diffusion import load_stable_diffusion

    global TENSORS
    vectors = load_vectors()
    TENSORS = vectors.tensors
    prior = load_stable_diffusion(str(vectors.model), "cpu", view_dependent_prompts=True)
    rows: dict[str, dict[str, float]] = {}
    for case in (c for c in vectors.cases if c["kind"] == "sdi"):
        k, prompt, cameras = case["id"], fill_embeddings(prior, vectors, case), case_cameras(case, TENSORS)
        x0, column = TENSORS[f"{k}_x0"], f"{k} t={case['settings']['t']}" + (" pn" if case["settings"]["use_perp_neg"]
                                                                              else "")
        reference = target(prior, case, case_rule(case), list(TENSORS[f"{k}_inv_noise"]), x0, prompt, cameras)
        theirs = TENSORS[f"{k}_target"]
        rows.setdefault("0 ours (sdi-reference) vs the authors' stored target", {})[column] = rel(reference, theirs)
        for name, (rule, draws) in variants(case).items():
            rows.setdefault(name, {})[column] = rel(target(prior, case, rule, draws, x0, prompt, cameras), reference)
        if case["settings"].get("input") == "rgb":
            mean = TENSORS[f"{k}_vae_posterior_mean"] * 0.18215
            rows.setdefault("8 VAE posterior mean instead of sample", {})[column] = rel(
                target(prior, case, case_rule(case), list(TENSORS[f"{k}_inv_noise"]), mean, prompt, cameras), reference)
        print(f"done {column}", file=sys.stderr)
    for case in (c for c in vectors.cases if c["kind"] == "sds" and c["settings"]["batch_size"] == 1):
        k, prompt, cameras = case["id"], fill_embeddings(prior, vectors, case), case_cameras(case, TENSORS)
        column = f"{k} SDS t={int(TENSORS[f'{k}_t'])} s={case['settings']['guidance_scale']:g}" + (
            " pn" if case["settings"]["use_perp_neg"] else "")
        ours = sds_grad(prior, case, case_rule(case), prompt, cameras)
        rows.setdefault("9 SDS: ours (sds-threestudio) vs threestudio's stored grad", {})[column] = rel(
            ours, TENSORS[f"{k}_grad"])
        rows.setdefault("9a SDS: w = sigma(t) instead of 1 - a(t)", {})[column] = rel(
            sds_grad(prior, case, replace(case_rule(case), weighting="sigma"), prompt, cameras), ours)
        if not case["settings"]["use_perp_neg"]:
            rows.setdefault("9b SDS: Eq. 3 CFG instead of eps_c + s (eps_c - eps_u)", {})[column] = rel(
                sds_grad(prior, case, replace(case_rule(case), guidance=Guidance()), prompt, cameras), ours)
    order = lambda c: ("SDS" in c, int(c.split("t=")[1].split()[0]), c)  # noqa: E731
    columns = sorted({c for r in rows.values() for c in r}, key=order)
    print("| difference (one at a time) | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name in sorted(rows):
        print(f"| {name} | " + " | ".join(f"{rows[name][c]:.3g}" if c in rows[name] else "" for c in columns) + " |")


def sds_grad(prior, case, rule, prompt, cameras) -> torch.Tensor:
    k = case["id"]
    t = int(TENSORS[f"{k}_t"])
    noise = ReplayNoise([TENSORS[f"{k}_sds_noise"]])
    return distill_update(rule, prior, TENSORS[f"{k}_x0"], Levels(t, t), prompt, noise, {}, cameras).grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


TENSORS: dict = {}

if __name__ == "__main__":
    main()
