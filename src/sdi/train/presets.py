"""Typed presets: plain Python objects, no string registries of untyped dicts.

``sdi-paper`` and ``sdi-reference`` differ exactly where the paper and the authors' code differ
(see docs/paper-vs-reference.md); ``sds-threestudio`` is threestudio's dreamfusion-sd SDS, the paper's
Table 1 baseline; ``fast`` is the CPU default of ``sdi generate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

from sdi.distill.csd import csd
from sdi.distill.ism import ism
from sdi.distill.nfsd import nfsd
from sdi.distill.rule import Rule
from sdi.distill.sdi import sdi_paper, sdi_reference
from sdi.distill.sds import sds, sds_threestudio
from sdi.priors.stable_diffusion import StableDiffusionOptions
from sdi.scene.cameras import CameraSampling
from sdi.scene.fields import DensityConfig, GridFieldConfig, HashGridFieldConfig
from sdi.scene.renderer import NormalsMethod, Strategy

RuleFactory = Callable[[], Rule]


def ramp(start: float, end: float, over: float) -> Callable[[float], float]:
    """A loss weight going linearly from ``start`` to ``end`` over the first ``over`` of training."""
    return lambda progress: start + (end - start) * min(progress / over, 1.0) if over > 0 else end


def window(value: float, until: float) -> Callable[[float], float]:
    """A loss weight ``value`` during the first ``until`` of training, 0 afterwards."""
    return lambda progress: value if progress < until else 0.0


def constant(value: float) -> Callable[[float], float]:
    return lambda progress: value


@dataclass(frozen=True)
class LrSchedule:
    """Multiplier of ``Preset.lr`` as a pure function of the step (so a resumed run is bit-identical): linear
    warmup over the first ``warmup`` steps, then an exponential or cosine decay from 1 to ``final`` at the last."""

    warmup: int = 0
    """Steps of linear warmup (step k gets (k + 1) / warmup)."""
    final: float = 1.0
    """Multiplier at the last step (1: constant)."""
    decay: Literal["exponential", "cosine"] = "exponential"
    """final ** progress, or final + (1 - final) (1 + cos(pi progress)) / 2."""

    def __call__(self, step: int, steps: int) -> float:
        warm = min((step + 1) / self.warmup, 1.0) if self.warmup > 0 else 1.0
        progress = min(max(step - self.warmup, 0) / max(steps - 1 - self.warmup, 1), 1.0)
        if self.decay == "exponential":
            return warm * self.final**progress
        if self.decay == "cosine":
            return warm * (self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress)))
        raise ValueError(f"unknown lr decay {self.decay!r}; use 'exponential' or 'cosine'")


@dataclass(frozen=True)
class LossWeights:
    """Regularizer weights as pure functions of training progress in [0, 1]."""

    orientation: Callable[[float], float] = constant(0.0)
    """DreamFusion's orientation loss (normals facing the camera)."""
    sparsity: Callable[[float], float] = constant(0.0)
    """Mean opacity penalty (empty space)."""
    opaque: Callable[[float], float] = constant(0.0)
    """Binary entropy of opacity (crisp silhouettes)."""
    convexity: Callable[[float], float] = window(0.1, 0.4)
    """The paper's convexity loss on 8x8 normals, weight 0.1 for the first 40% of steps."""
    z_variance: Callable[[float], float] = constant(0.0)
    """Variance of sample depth along each ray (thin surfaces)."""


@dataclass(frozen=True)
class RenderOptions:
    """How the training loop renders (``sdi.scene.renderer.render``'s options, and the occupancy grid's size)."""

    strategy: Strategy = "single_pass"
    """"single_pass": every candidate sample with gradients; "two_pass": densities without gradients first,
    with early ray termination, then gradients only before it (``sdi.scene.marching``)."""
    normals: NormalsMethod = "auto"
    """Normals for shading and the normal losses: "auto" (the grid's own, else autograd), "finite_difference"
    (central, 6 density evaluations, threestudio's), "forward_difference" (3), "autograd" (double backward)."""
    occupancy_resolution: int = 32
    """Cells per side of the occupancy grid that skips empty space."""
    early_stop: float = 1e-4
    """two_pass: a ray stops where its transmittance falls below this."""
    segments: int = 4
    """two_pass: blocks of samples marched front to back (one host sync each)."""
    min_alpha: float = 0.0
    """two_pass: samples of alpha <= this get no gradient."""
    compile_field: bool = False
    """``torch.compile`` the field (fullgraph, dynamic shapes), on CUDA only."""

    def render_kwargs(self) -> dict:
        """The keyword arguments of ``render`` these options set."""
        return {"strategy": self.strategy, "normals": self.normals, "early_stop": self.early_stop,
                "segments": self.segments, "min_alpha": self.min_alpha}


@dataclass(frozen=True)
class Preset:
    """Everything a run needs besides the prompt and seed."""

    name: str
    """Name of the preset (written into the run's config)."""
    rule: RuleFactory
    """Score-distillation rule."""
    steps: int = 300
    """Training steps."""
    lr: float = 0.05
    """Adam learning rate of the field."""
    lr_schedule: LrSchedule = LrSchedule()
    """Multiplier of ``lr`` per step (constant by default)."""
    batch: int = 2
    """Views rendered per step."""
    resolution: int = 64
    """Render resolution (and the embedded prior's). Stable Diffusion gets the render resized to its own size
    (``stable_diffusion.resize_to_model``), so 128 / 256 / 512 trade render time and memory for detail."""
    num_samples: int = 48
    """Samples per ray."""
    chunk: int | None = None
    """Rays rendered at a time, bounding the renderer's transient memory (every chunk stays in the autograd
    graph); None renders all rays at once."""
    radiance_field: GridFieldConfig | HashGridFieldConfig = field(default_factory=GridFieldConfig)
    """Radiance field: dense grid (CPU default) or hash grid."""
    cameras: CameraSampling = field(
        default_factory=lambda: CameraSampling(distance=(1.75, 1.75), fovy_deg=(50, 50), elevation_deg=(0, 40))
    )
    """Camera sampling; the embedded prior's exemplars sit at distance 1.75, fovy 50."""
    shading: tuple[tuple[Literal["albedo", "lambertian", "textureless"], float], ...] = (("albedo", 1.0),)
    """Shading modes and their probabilities per step (DreamFusion samples them)."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Regularizer weights."""
    checkpoint_every: int = 50
    """Steps between checkpoints (and at the end)."""
    stable_diffusion: StableDiffusionOptions = StableDiffusionOptions(view_dependent_prompts=True, resize_to_model=True)
    """How a Stable Diffusion prior (``--prior sd:PATH``) runs: view-dependent prompts, renders resized to the
    model's size, VAE gradient checkpointing, torch.compile of the UNet; the embedded prior ignores it."""
    render: RenderOptions = RenderOptions()
    """Render strategy, normals, occupancy grid size, field compilation."""
    random_background: float = 0.0
    """Probability that a view is composited over a uniformly random colour instead of the scene's background
    (threestudio's random background augmentation), drawn from the run's generator; the colours travel with the
    cameras (``Cameras.background``) to the embedded prior, which paints its exemplars over the same. Against white
    alone, white floaters and a filled torus hole cost nothing (they match the background)."""
    steps_per_target: int = 1
    """Adam steps per distillation target: each target is made at one step's cameras and pulled towards for this
    many steps, the same cameras re-rendered each time (the rule's schedule then runs over steps / this targets,
    so the denoiser is called this many times less). SDI keeps a mode only when the render keeps up with its target.
    ``fast`` takes 3 (with its 50-step inversion and the paper's tau, SDI cleared the main job's bar in 14 of 18 runs
    of the 6 x 3 modes table against 10 of 18 with 1 step and the paper's inversion; with tau up to 0.2, 18 of 18);
    the SDS presets keep 1 (at 3 on the single-view table both SDS baselines lost 1.7-3.3 dB: README, *A mode or the
    mean*; docs/results/modes-3-steps-per-target)."""
    joint_views: bool = False
    """The embedded prior as a multi-view prior (``CatalogPrior.joint_views``): one posterior over the variants for
    all of a step's cameras, so the step's views are pulled toward one variant. Stable Diffusion ignores it. ``fast``
    (and every CPU preset made from it) uses it: on the 6 x 3 modes table SDI clears the main job's bar in 10 of 18
    runs against 7 of 18 on the single-view prior, SDS and threestudio's SDS in 18 of 18 against 13 and 16 (README,
    *A mode or the mean*; docs/results/modes-joint-views, single-view: docs/results/modes). A run started without
    it is not resumed with it (``check_preset_matches``)."""
    average_views: bool = False
    """Distillation loss = the mean of the ``batch`` one-view losses (K-view steps, ``with_views_per_step``), instead
    of the authors' batch loss, which divides by the batch once more."""

    def __post_init__(self):
        if self.steps_per_target < 1:
            raise ValueError(f"Preset.steps_per_target must be at least 1, got {self.steps_per_target}")


FAST_WEIGHTS = LossWeights(convexity=window(0.1 / (2 * 3 * 64 * 64), 0.4))
"""The CPU default's convexity weight: 0.1 under the former sum loss (2 views of 3 x 64 x 64), rescaled to the mean
loss of ``distillation_loss`` so that the CPU run is unchanged."""

FAST_FIELD = GridFieldConfig(resolution=48, bound=0.6, density=DensityConfig(activation="exp", blob_scale=4.0))
"""The CPU default's field: 48^3 over [-0.6, 0.6]^3 (catalog objects lie within radius 0.48: voxels 0.026, about a
64x64 pixel), exp density (sharp surfaces within 300 steps). Chosen by docs/results/direct-fit.md. Its centre blob
is 4 high, not DreamFusion's 10: exp(10) is opaque enough that alpha saturates and the centre gets no gradient, so a
torus hole stays filled for the whole run (main job on the torus, random background on: mask IoU 0.894 with 10,
0.985 with 4)."""

FAST_INVERSION_STEPS = 50
"""``fast``'s inversion: 50 even DDIM steps up to t + tau instead of the paper's int(10 t) (2-9). On the embedded
prior the paper's coarse inversion makes the variants' blur hold SDI's target on the dotted sphere (gain -1.02 to
-0.83 at t = 200-800; 2.5-3.1 at t = 200-400 with 50 steps: benchmarks/kappa_norm.py, part 3). A call of this
closed-form prior is a few matrix products, not a UNet call: with the 3 Adam steps per target (a third of the
targets) the main job trained in 106.3 s against 105.2 s before, back to back (README, *3D*)."""

FAST_TAU_MAX = 0.2
"""``fast``'s jitter: kappa is estimated at t + tau, tau ~ U(0, 0.2), not the paper's U(0, 1/30) (the authors' code:
0.1). SDI's update is the DDIM step from t + tau down to t, so tau is how far one target carries the render along
DDIM's path; over ``fast``'s 100 targets (t falls 7.8 levels per target) the paper's tau leaves the dotted sphere at the
variants' blur, where SDI's target follows the render, on every seed (20.2-21.0 dB to its nearest variant). Seed 0,
``fast`` otherwise: tau_max 1/30 20.4 dB, 0.1 19.9, 0.2 24.8, 0.3 24.6; the blur is left where the gain of
benchmarks/kappa_norm.py part 3 is above 1 (t <= 400), and a longer step gets further from it per target."""

FAST = Preset("fast", lambda: sdi_paper(inversion_steps=FAST_INVERSION_STEPS, tau_max=FAST_TAU_MAX), lr=0.1,
              num_samples=32, radiance_field=FAST_FIELD, weights=FAST_WEIGHTS, random_background=0.5,
              joint_views=True, steps_per_target=3)
"""CPU default: SDI with the paper's numbers but a 50-step inversion (``FAST_INVERSION_STEPS``), tau ~ U(0, 0.2)
(``FAST_TAU_MAX``) and 3 Adam steps per target (``steps_per_target``: 100 targets over the 300 steps), dense 48^3
grid, 2 views of 64x64, 32 samples per ray (over the 1.2-wide box: finer than the former 48 over 2), Adam lr 0.1, 300
steps, half the views over a random colour (white floaters on a cone and the white-filled hole of a torus are
invisible on white: mask IoU 0.706 -> 0.951 on the cone), the embedded prior as a multi-view prior (``joint_views``: a
step's 2 views are pulled toward one variant)."""

PAPER_CAMERAS = CameraSampling(distance=(1.5, 2.0), fovy_deg=(40, 70), elevation_deg=(-10, 45))
PAPER_WEIGHTS = LossWeights(
    orientation=constant(0.1),
    sparsity=ramp(0.15, 0.0, 0.3),
    opaque=constant(0.1),
    convexity=window(0.1, 0.4),
    z_variance=constant(1.0),
)

SDI_PAPER = Preset(
    "sdi-paper",
    lambda: sdi_paper(),
    steps=10_000,
    lr=0.01,
    batch=1,
    resolution=512,
    num_samples=512,
    radiance_field=HashGridFieldConfig(n_levels=16, log2_hashmap_size=19, use_tcnn=True),
    cameras=PAPER_CAMERAS,
    shading=(("albedo", 0.0), ("lambertian", 0.25), ("textureless", 0.75)),
    weights=PAPER_WEIGHTS,
    checkpoint_every=1000,
    render=RenderOptions("two_pass", "forward_difference", occupancy_resolution=128),
)
"""The paper's App. A: SD 2.1-base at 512x512, hash grid, 10k steps, Perp-Neg (a GPU run with --prior sd:PATH).
Rendered in two passes over a 128^3 occupancy grid with forward-difference normals (docs/gpu-path.md: same images as
the single pass, a third of the gradient evaluations; normals 7.5 deg off the true surface vs autograd's 14 deg)."""

THREESTUDIO_SD = StableDiffusionOptions(view_dependent_prompts=True, resize_to_model=True, encode_mode="sample")
"""Stable Diffusion as threestudio runs it: view prompts, renders resized to 512, latents by posterior.sample()."""

SDI_REFERENCE = replace(
    SDI_PAPER,
    name="sdi-reference",
    rule=lambda: sdi_reference(),
    weights=replace(PAPER_WEIGHTS, convexity=ramp(1.0, 0.1, 0.4)),
    stable_diffusion=THREESTUDIO_SD,
)
"""The authors' threestudio code (configs/sdi.yaml): their SDI step exactly (tests/test_reference_vectors.py), their
convexity weight 1.0 -> 0.1 over 4000 steps, latents sampled from the VAE posterior."""

SDS_THREESTUDIO = replace(
    SDI_PAPER,
    name="sds-threestudio",
    rule=lambda: sds_threestudio(),
    resolution=64,
    cameras=CameraSampling(distance=(1.5, 2.0), fovy_deg=(40, 70), elevation_deg=(-10, 90)),
    weights=LossWeights(orientation=ramp(10.0, 1000.0, 0.5), sparsity=constant(1.0), convexity=constant(0.0)),
    stable_diffusion=THREESTUDIO_SD,
)
"""threestudio's configs/dreamfusion-sd.yaml: its SDS step exactly (CFG 100, w = 1 - a_t, loss 0.5 sum / B), 64x64
renders resized to 512, orientation 10 -> 1000 over 5000 steps, sparsity 1 (weights for its sum loss); Perp-Neg on."""

SDS = replace(FAST, name="sds", rule=lambda: sds(cfg=7.5), steps_per_target=1)
"""SDS on the CPU settings (CFG 7.5 to compare with SDI at the same guidance; DreamFusion used 100)."""

ISM = replace(FAST, name="ism", rule=lambda: ism(cfg=7.5), steps_per_target=1)
"""ISM (LucidDreamer) on the CPU settings."""

NFSD = replace(FAST, name="nfsd", rule=lambda: nfsd(cfg=7.5, negative=""), steps_per_target=1)
"""NFSD on the CPU settings; the embedded prior has no free-text negative prompt, so delta_D = 0 for t >= 200."""

CSD = replace(FAST, name="csd", rule=lambda: csd(scale=7.5), steps_per_target=1)
"""CSD (classifier score only) on the CPU settings, scale 7.5."""

PRESETS: dict[str, Preset] = {p.name: p for p in (FAST, SDI_PAPER, SDI_REFERENCE, SDS_THREESTUDIO, SDS, ISM, NFSD, CSD)}
"""Presets by name, for the command line."""


def gpu_sized(preset: Preset) -> bool:
    """Whether ``preset`` is a GPU run for Stable Diffusion (512 renders or threestudio's hash grid at any size)."""
    return preset.resolution > 128 or isinstance(preset.radiance_field, HashGridFieldConfig)


def cpu_sized(preset: Preset) -> Preset:
    """A GPU preset shrunk to CPU sizes, keeping its rule and its one Adam step per target (for --preset sdi-paper
    on the embedded prior: the paper's SDI on ``fast``'s field and prior)."""
    return replace(FAST, name=preset.name, rule=preset.rule, steps_per_target=preset.steps_per_target)


def with_views_per_step(preset: Preset, views: int, antithetic: bool = False) -> Preset:
    """K views per step (MV-SDI): ``views`` cameras per step, all in one batched UNet call per guidance step
    (antithetic pairs 180 degrees apart in azimuth if asked), their distillation gradients averaged, and
    ``preset.steps // views`` steps, so that the denoiser sees as many images as a one-view run of ``preset.steps``."""
    if views < 1:
        raise ValueError(f"--views-per-step must be at least 1, got {views}")
    if antithetic and views % 2:
        raise ValueError(f"--antithetic draws views in pairs: --views-per-step must be even, got {views}")
    cameras = replace(preset.cameras, antithetic=antithetic)
    return replace(preset, batch=views, steps=max(preset.steps // views, 1), cameras=cameras, average_views=True)


def views_line(preset: Preset) -> str:
    """What a K-view preset does, for the progress line ("" for one-view steps)."""
    if not preset.average_views or preset.batch == 1:
        return ""
    kind = "antithetic" if preset.cameras.antithetic else "uniform"
    return (f"{preset.batch} {kind} views/step, {preset.steps} steps = one-view budget / {preset.batch} "
            "(same denoiser images)")


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a one-line error listing them."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
