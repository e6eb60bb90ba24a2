"""2D score distillation, the paper's Figure 1 (a-c): DDIM, SDS and SDI from the same prior and seed.

Every method starts from the same image: the seed noise z at the top of the DDIM grid, denoised
once, x0 = x0_hat(sqrt(1 - a_T) z). Then each step applies its rule's Eq. 10 update
x0 <- x0 - lr w(t) (eps - kappa). The DDIM reference is ``ddim_sample`` from x_T = sqrt(1 - a_T) z
(the noised zero image) to a(0) = 1, so its result is the last x0 prediction, like every rule's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sdi.diffusion.ddim import DDIMStep, ddim_sample
from sdi.diffusion.guidance import eps_fn_for, guided_eps
from sdi.diffusion.parametrization import add_noise, x0_from_eps
from sdi.diffusion.schedules import sampling_grid
from sdi.distill.ism import ism
from sdi.distill.noise import FixedPoint, GradientDescent, NoiseQuery, RandomFixed, eq8_residual
from sdi.distill.rule import Rule, distill_step
from sdi.distill.sdi import sdi_cached, sdi_grid
from sdi.distill.sds import sds
from sdi.distill.timesteps import GridT
from sdi.metrics import detail_ratio, l2_distance
from sdi.diffusion.denoiser import CountingDenoiser, Denoiser
from sdi.priors.exemplar import ExemplarPrior
from sdi.priors.patch_exemplar import PatchExemplarPrior

PRIORS_2D = ("patches", "exemplar")
"""Built-in 2D priors over an image set: the patch exemplar prior (default) and the whole-image one."""


def check_image_prior(name: str) -> None:
    """A one-line error unless ``name`` is one of PRIORS_2D (checked before any image is loaded)."""
    if name not in PRIORS_2D:
        raise ValueError(f"unknown prior {name!r}; use {', '.join(PRIORS_2D)} or sd:PATH")


def image_prior(name: str, images: Tensor, labels: list[str], patch: int = 8) -> ExemplarPrior:
    """The closed-form prior ``name`` over ``images``: "patches" quilts ``patch``-pixel tiles (its denoiser
    averages over many sharp images at high noise, like a real model's), "exemplar" keeps whole images."""
    check_image_prior(name)
    return PatchExemplarPrior(images, labels, patch) if name == "patches" else ExemplarPrior(images, labels)


@dataclass(frozen=True)
class Method2D:
    """A 2D method: its rule and its step size (1 = the full Eq. 10 step, i.e. DDIM's)."""

    rule: Rule
    lr: float = 1.0


def _on_grid(noise, name: str) -> Callable[[float], Method2D]:
    return lambda cfg: Method2D(Rule(name, GridT(), noise, cfg))


METHODS_2D: dict[str, Callable[[float], Method2D]] = {
    "sds": lambda cfg: Method2D(sds(cfg), lr=0.1),
    "sdi": lambda cfg: Method2D(sdi_grid(cfg)),
    "sdi-cached": lambda cfg: Method2D(sdi_cached(cfg)),
    "ism": lambda cfg: Method2D(ism(cfg), lr=0.1),
    "random-fixed": _on_grid(RandomFixed(), "random-fixed"),
    "fixed-point": _on_grid(FixedPoint(), "fixed-point"),
    "sgd": _on_grid(GradientDescent(), "sgd"),
}
"""Score-distillation methods of ``sdi 2d``; "ddim" is the reference sampler itself."""

ALL_METHODS = ("ddim", *METHODS_2D)


@dataclass
class Result2D:
    """Final image, snapshots of x0 along the way, and measurements."""

    method: str
    image: Tensor  # (1, C, H, W) in [-1, 1]
    snapshots: list[Tensor] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def seed_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """The run's starting noise z, shared by every method of the same seed."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def snapshot_steps(steps: int, count: int = 8) -> set[int]:
    """Which steps' x0 go into the strip of intermediate images."""
    return {round(i * (steps - 1) / (count - 1)) for i in range(count)} if steps > 1 else {0}


def run_ddim(denoiser: Denoiser, prompt: str, cfg: float, steps: int, z: Tensor, progress: bool = False) -> Result2D:
    """The reference: deterministic DDIM from x_T = sqrt(1 - a_T) z down to a = 1."""
    counter = CountingDenoiser(denoiser)
    grid = sampling_grid(counter.alphas_cumprod, steps, final_alpha=1.0)
    keep, snaps = snapshot_steps(steps), []
    bar = tqdm(total=steps, desc="ddim", disable=not progress, leave=False)

    def callback(step: DDIMStep) -> None:
        bar.update()
        if step.i in keep:
            snaps.append(step.x0)

    start = time.perf_counter()
    x_top = add_noise(torch.zeros_like(z), z, grid.alphas[0])
    image = ddim_sample(eps_fn_for(counter, prompt, cfg), x_top, grid, callback)
    bar.close()
    metrics = {"wall_time_s": time.perf_counter() - start, "denoiser_calls": counter.calls}
    return Result2D("ddim", image, snaps, metrics)


def initial_image(denoiser: Denoiser, prompt: str, cfg: float, z: Tensor, t_top: int) -> tuple[Tensor, Tensor]:
    """x0 and eps of the seed noise at the top of the grid, denoised once (every method's start)."""
    alpha = denoiser.alphas_cumprod[t_top]
    x_top = add_noise(torch.zeros_like(z), z, alpha)
    eps = guided_eps(denoiser, x_top, torch.full((len(z),), t_top), prompt, cfg)
    return x0_from_eps(x_top, eps, alpha), eps


def run_rule(
    denoiser: Denoiser, method: Method2D, prompt: str, steps: int, z: Tensor, seed: int, progress: bool = False
) -> Result2D:
    """Run a score-distillation rule on a plain image tensor for ``steps`` steps (step 0 = the shared start)."""
    counter, rule = CountingDenoiser(denoiser), method.rule
    t_top = int(GridT().timesteps(steps, len(denoiser.alphas_cumprod))[0])
    start = time.perf_counter()
    x0, eps = initial_image(counter, prompt, rule.cfg, z, t_top)
    state, generator = {"initial_noise": z, "last_eps": eps}, torch.Generator().manual_seed(seed + 1)
    keep, snaps, residuals = snapshot_steps(steps), [x0], []
    for step in tqdm(range(1, steps), desc=rule.name, disable=not progress, leave=False):
        update = distill_step(rule, counter, x0, step, steps, prompt, generator, state)
        query = NoiseQuery(denoiser, x0, update.levels.t, update.levels.t, prompt, rule.cfg, None, generator)
        residuals.append(eq8_residual(query, update.noise.kappa).mean().item())
        x0 = x0 - method.lr * update.grad
        if step in keep:
            snaps.append(x0)
    metrics = {
        "wall_time_s": time.perf_counter() - start,
        "denoiser_calls": counter.calls,
        "eq8_residual": sum(residuals) / max(len(residuals), 1),
    }
    return Result2D(rule.name, x0, snaps, metrics)


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def decoded(denoiser: Denoiser, x: Tensor) -> Tensor:
    """``x`` decoded to an image in [0, 1], on the CPU."""
    with torch.no_grad():
        return to_unit(denoiser.decode(x)).cpu()


def measure(denoiser: Denoiser, prompt: str, result: Tensor, ddim: Tensor) -> dict[str, float]:
    """How a result compares with the DDIM sample of the same seed, on decoded images in [0, 1]: RMS distance,
    detail (high-frequency energy ratio), and, for the closed-form priors, the RMS distance to the prior's
    nearest sample (0 = a sharp sample of the prior; a blurred one is off its support)."""
    image, reference = decoded(denoiser, result), decoded(denoiser, ddim)
    metrics = {"distance_to_ddim": l2_distance(image, reference).mean().item(),
               "detail_vs_ddim": detail_ratio(image, reference).mean().item()}
    if isinstance(denoiser, ExemplarPrior):
        nearest = to_unit(denoiser.project(result, prompt))
        metrics["distance_to_prior"] = l2_distance(image, nearest).mean().item()
    return metrics


def run_method(
    denoiser: Denoiser, method: str, prompt: str, cfg: float, steps: int, seed: int, shape, progress: bool = False
) -> Result2D:
    """Run one named method ("ddim" or a key of METHODS_2D) from the seed's noise."""
    if steps < 2:
        raise ValueError(f"--steps must be at least 2, got {steps}")
    z = seed_noise(shape, seed).to(getattr(denoiser, "device", "cpu"))  # drawn on the CPU: same on any device
    if method == "ddim":
        return run_ddim(denoiser, prompt, cfg, steps, z, progress)
    if method not in METHODS_2D:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}, all")
    result = run_rule(denoiser, METHODS_2D[method](cfg), prompt, steps, z, seed, progress)
    return replace(result, method=method)
