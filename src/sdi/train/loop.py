"""The training loop, short and explicit: sample cameras, render, apply the rule, regularize, Adam.

``train`` is a generator the caller drives (progress bars, checkpoints, stopping are the caller's).
All randomness comes from one ``torch.Generator``, so a run is deterministic on the CPU and a
resumed run continues exactly where the killed one stopped. The scene, the generator and every
tensor of a step live on one device: the prior's. A step reads no loss value back to the host: the
losses stay on the device (``StepInfo``) and ``train`` checks them for NaN every ``SYNC_EVERY`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from torch import Tensor, nn

from sdi.distill.rule import Rule, Update, distill_step, weighted_loss
from sdi.diffusion.denoiser import Denoiser, encode
from sdi.diffusion.noise_sampler import generator_noise
from sdi.scene.fields import GridField, GridFieldConfig, HashGridField, SolidBackground
from sdi.scene.regularizers import (
    convexity_loss,
    image_axes,
    opacity_loss,
    orientation_loss,
    sparsity_loss,
    z_variance_loss,
)
from sdi.scene.cameras import Cameras
from sdi.scene.compiled import compile_field
from sdi.scene.occupancy import OccupancyGrid
from sdi.scene.renderer import SHADING_MODES, RenderOutput, render
from sdi.train.presets import Preset

SYNC_EVERY = 10
"""Steps between host reads of the loss (NaN check here, progress bar in ``sdi.train.run``); and at checkpoints."""


class TrainingDiverged(RuntimeError):
    """NaN or inf in the loss or the parameters."""


@dataclass
class Scene:
    """Field + background + the occupancy grid that lets CPU renders skip empty space."""

    field: nn.Module
    background: nn.Module
    occupancy: OccupancyGrid

    def modules(self) -> dict[str, nn.Module]:
        return {"field": self.field, "background": self.background, "occupancy": self.occupancy}

    @property
    def device(self) -> torch.device:
        """Where the scene's tensors live."""
        return self.occupancy.mask.device

    @property
    def bound(self) -> float:
        """Half side of the box rendered (the field's and the occupancy grid's)."""
        return self.occupancy.bound


def build_scene(preset: Preset, device: torch.device | str = "cpu") -> Scene:
    """A fresh scene for ``preset`` on ``device`` (parameters drawn on the CPU from torch's default generator,
    so they do not depend on the device: seed it first)."""
    cfg, options = preset.radiance_field, preset.render
    field_module = (GridField(cfg) if isinstance(cfg, GridFieldConfig) else HashGridField(cfg)).to(device)
    if options.compile_field and torch.device(device).type == "cuda":
        compile_field(field_module)
    occupancy = OccupancyGrid(resolution=options.occupancy_resolution, bound=cfg.bound).to(device)
    return Scene(field_module, SolidBackground().to(device), occupancy)


@dataclass
class TrainState:
    """What a checkpoint holds: the scene, Adam, the generator, the step, the rule's state."""

    scene: Scene
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    rule_state: dict = field(default_factory=dict)


def new_state(preset: Preset, seed: int, device: torch.device | str = "cpu") -> TrainState:
    """Seeded initial state on ``device``: the same seed gives the same run."""
    torch.manual_seed(seed)
    scene = build_scene(preset, device)
    params = [p for m in (scene.field, scene.background) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=preset.lr, betas=(0.9, 0.99), eps=1e-15)
    return TrainState(scene, optimizer, torch.Generator(scene.device).manual_seed(seed))


@dataclass(frozen=True)
class StepInfo:
    """What one step did, for progress bars and metrics. The losses stay where they were computed: reading
    ``loss``, ``distill`` or ``regularizers`` copies them to the host (a sync on a GPU), so read them now and then."""

    step: int
    t: int
    losses: dict[str, Tensor]
    """Detached 0-dim losses: "loss" (the total), "distill", then each regularizer with a non-zero weight."""

    @property
    def loss(self) -> float:
        return self.losses["loss"].item()

    @property
    def distill(self) -> float:
        return self.losses["distill"].item()

    @property
    def regularizers(self) -> dict[str, float]:
        return {k: v.item() for k, v in self.losses.items() if k not in ("loss", "distill")}
    grad_norm: Tensor | None = None
    """0-dim L2 norm of the gradient of every trained parameter, before Adam (on the device, like ``losses``)."""
    render: Tensor | None = None
    """(B, 3, H, W) this step's render in [0, 1], detached (for logs and live previews)."""
    target: Tensor | None = None
    """The rule's target ``x0 - grad`` in the prior's space, detached (``denoiser.decode`` shows it)."""


def sample_shading(preset: Preset, generator: torch.Generator) -> str | Tensor:
    """DreamFusion's random choice among albedo / lambertian / textureless. A preset with one mode gets its
    name; else one-hot weights (3,) over ``SHADING_MODES``, drawn on the generator's device (no sync, no copy)."""
    u = torch.rand((), generator=generator, device=generator.device)
    if len(preset.shading) == 1:
        return preset.shading[0][0]
    weights, total = dict.fromkeys(SHADING_MODES, torch.zeros_like(u)), 0.0
    for i, (mode, probability) in enumerate(preset.shading):  # the first mode whose cumulative probability > u
        below, total = total, total + probability if i < len(preset.shading) - 1 else math.inf
        weights[mode] = weights[mode] + ((u >= below) & (u < total)).to(u.dtype)
    return torch.stack([weights[m] for m in SHADING_MODES])


def sample_lights(cameras, generator: torch.Generator) -> Tensor:
    """A point light near each camera (DreamFusion), (B, 3)."""
    offset = torch.randn((len(cameras), 3), generator=generator, device=generator.device) * 0.5
    return cameras.positions * 1.2 + offset


def regularizers(out: RenderOutput, preset: Preset, progress: float) -> dict[str, Tensor]:
    """Weighted regularizer losses whose weight is non-zero at this point of training."""
    w = preset.weights
    terms = {
        "orientation": (w.orientation(progress), lambda: orientation_loss(out)),
        "sparsity": (w.sparsity(progress), lambda: sparsity_loss(out)),
        "opaque": (w.opaque(progress), lambda: opacity_loss(out)),
        "convexity": (w.convexity(progress), lambda: convexity_loss(out.normals, *image_axes(out.directions))),
        "z_variance": (w.z_variance(progress), lambda: z_variance_loss(out)),
    }
    return {name: weight * loss() for name, (weight, loss) in terms.items() if weight > 0}


def render_step(state: TrainState, preset: Preset) -> tuple[Cameras, RenderOutput]:
    """The start of every step: occupancy update, cameras, shading and lights drawn from the generator, render."""
    cameras, _, _, out = draw_and_render(state, preset)
    return cameras, out


def draw_and_render(state: TrainState, preset: Preset) -> tuple[Cameras, str | Tensor, Tensor | None, RenderOutput]:
    """``render_step``, also returning the shading and lights it drew (a held target re-renders with them)."""
    g, scene = state.generator, state.scene
    scene.occupancy.update(state.step, scene.field.density, g)
    cameras = preset.cameras.sample(preset.batch, preset.resolution, g)
    shading = sample_shading(preset, g)
    lights = None if isinstance(shading, str) and shading == "albedo" else sample_lights(cameras, g)
    out = render_views(state, preset, cameras, shading, lights)
    if preset.random_background > 0:
        cameras, out = random_background(scene, cameras, out, preset.random_background, g)
    return cameras, shading, lights, out


def render_views(state: TrainState, preset: Preset, cameras: Cameras, shading: str | Tensor,
                 lights: Tensor | None) -> RenderOutput:
    """The scene at ``cameras`` with the preset's render options (stratified samples drawn from the generator)."""
    scene = state.scene
    return render(scene.field, scene.background, cameras, preset.num_samples, shading, lights, state.generator,
                  scene.occupancy, chunk=preset.chunk, bound=scene.bound, **preset.render.render_kwargs())


def random_background(scene: Scene, cameras: Cameras, out: RenderOutput, probability: float,
                      generator: torch.Generator) -> tuple[Cameras, RenderOutput]:
    """The render recomposited over one colour per view: uniformly random with ``probability``, else the scene's
    background behind the view's centre (a solid background: the render unchanged); the cameras carry the colours."""
    g, B = generator, len(cameras)
    u = torch.rand(B, generator=g, device=g.device)
    colours = torch.rand(B, 3, generator=g, device=g.device)
    behind = scene.background(out.directions).permute(0, 3, 1, 2)  # (B, 3, H, W) what the render is composited on
    centre = behind[:, :, behind.shape[2] // 2, behind.shape[3] // 2]
    chosen = torch.where((u < probability)[:, None], colours, centre)
    return replace(cameras, background=chosen), composited(scene, out, chosen)


def composited(scene: Scene, out: RenderOutput, colours: Tensor) -> RenderOutput:
    """``out`` with its rgb recomposited from the scene's background onto one colour (B, 3) per view."""
    behind = scene.background(out.directions).permute(0, 3, 1, 2)
    out.rgb = out.rgb + (1 - out.opacity) * (colours[:, :, None, None] - behind)
    return out


def optimizer_step(state: TrainState, preset: Preset, loss: Tensor) -> Tensor:
    """The end of every step: the scheduled learning rate, backward, Adam; returns the 0-dim gradient norm."""
    lr = preset.lr * preset.lr_schedule(state.step, preset.steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for g in state.optimizer.param_groups for p in g["params"]
                                               if p.grad is not None])
    state.optimizer.step()
    state.step += 1
    return grad_norm


def training_step(state: TrainState, preset: Preset, rule: Rule, denoiser: Denoiser, prompt: str) -> StepInfo:
    """One Adam step: cameras -> render -> Eq. 10 update of the encoded render -> regularizers -> Adam. With
    ``preset.steps_per_target`` K > 1, every K-th step makes a target (the rule's schedule runs over steps / K
    targets) and the K - 1 steps after it re-render the same cameras towards it (``held_step``)."""
    K = preset.steps_per_target
    if K > 1 and state.step % K != 0 and HELD + "target" in state.rule_state:
        return held_step(state, preset, denoiser)
    g, step, progress = state.generator, state.step, state.step / max(preset.steps - 1, 1)
    cameras, shading, lights, out = draw_and_render(state, preset)
    latent = encode(denoiser, out.rgb * 2 - 1, generator_noise(g))  # SD's posterior.sample() draws from g
    update = distill_step(rule, denoiser, latent, step // K, -(-preset.steps // K), prompt, g, state.rule_state,
                          cameras)
    if K > 1:
        hold_target(state, cameras, shading, lights, update)
    distill = views_loss(preset, latent, update.target, update.loss_weight)
    return finish_step(state, preset, out, distill, progress, update.levels.t, update.target)


HELD = "held_"
"""Prefix of the ``rule_state`` entries that keep a target for the steps after it (saved in checkpoints)."""


def hold_target(state: TrainState, cameras: Cameras, shading: str | Tensor, lights: Tensor | None,
                update: Update) -> None:
    """Keep what the next steps re-render and pull towards: cameras, backgrounds, shading, lights, the target."""
    held = {"target": update.target.detach(), "c2w": cameras.c2w, "fovy": cameras.fovy,
            "t": torch.tensor(update.levels.t), "loss_weight": torch.tensor(update.loss_weight, dtype=torch.float64),
            "background": cameras.background, "lights": lights,
            "shading": None if isinstance(shading, str) else shading}  # one mode: the preset's, by name
    for key in [k for k in state.rule_state if k.startswith(HELD)]:
        del state.rule_state[key]
    state.rule_state.update({HELD + k: v for k, v in held.items() if v is not None})


def held_step(state: TrainState, preset: Preset, denoiser: Denoiser) -> StepInfo:
    """One Adam step towards the held target: the same cameras re-rendered (with the same shading, lights and
    background colours, new stratified samples), encoded, and pulled towards it."""
    g, scene, progress = state.generator, state.scene, state.step / max(preset.steps - 1, 1)
    held = {k[len(HELD):]: v for k, v in state.rule_state.items() if k.startswith(HELD)}
    cameras = Cameras(held["c2w"], held["fovy"], preset.resolution, preset.resolution)
    scene.occupancy.update(state.step, scene.field.density, g)
    out = render_views(state, preset, cameras, held.get("shading", preset.shading[0][0]), held.get("lights"))
    if "background" in held:
        out = composited(scene, out, held["background"])
    latent = encode(denoiser, out.rgb * 2 - 1, generator_noise(g))
    distill = views_loss(preset, latent, held["target"], float(held["loss_weight"]))
    return finish_step(state, preset, out, distill, progress, int(held["t"]), held["target"])


def views_loss(preset: Preset, latent: Tensor, target: Tensor, loss_weight: float = 1.0) -> Tensor:
    """The step's distillation loss: the rule's term of the one loss convention (``weighted_loss``, as
    ``Update.loss``: ``loss_weight`` x the authors' batch loss), or with ``preset.average_views`` the mean of the B
    one-view losses, whose gradient is the mean of the one-view gradients (K-view steps)."""
    loss = weighted_loss(latent, target, loss_weight)
    return loss * len(latent) if preset.average_views else loss


def finish_step(state: TrainState, preset: Preset, out: RenderOutput, distill: Tensor, progress: float, t: int,
                target: Tensor) -> StepInfo:
    """Regularizers, Adam, and what the step did."""
    regs = regularizers(out, preset, progress)
    loss = distill + sum(regs.values())
    grad_norm = optimizer_step(state, preset, loss)
    losses = {"loss": loss, "distill": distill, **regs}
    return StepInfo(state.step, t, {k: v.detach() for k, v in losses.items()}, grad_norm.detach(),
                    out.rgb.detach(), target.detach())


class DivergenceWatch:
    """The first step whose loss was not finite, kept on the loss's device (no sync per step)."""

    def __init__(self):
        self.step: Tensor | None = None
        self.loss: Tensor | None = None

    def update(self, step: int, loss: Tensor) -> None:
        if self.step is None:
            self.step, self.loss = torch.full((), -1, device=loss.device), torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step, self.loss = torch.where(first, step, self.step), torch.where(first, loss, self.loss)

    def check(self) -> None:
        """Raise TrainingDiverged naming the first bad step (one sync)."""
        if self.step is not None and (step := int(self.step)) >= 0:
            raise TrainingDiverged(f"the loss became {float(self.loss)} at step {step}")


def train(state: TrainState, preset: Preset, rule: Rule, denoiser: Denoiser, prompt: str) -> Iterator[StepInfo]:
    """Run from ``state.step`` to ``preset.steps``, yielding after every step; raises TrainingDiverged (naming
    the first step whose loss was NaN or inf) every ``SYNC_EVERY`` steps, at checkpoint steps and at the end,
    before yielding, so that no checkpoint follows a non-finite loss."""
    watch = DivergenceWatch()
    while state.step < preset.steps:
        info = training_step(state, preset, rule, denoiser, prompt)
        watch.update(info.step - 1, info.losses["loss"])
        if info.step % SYNC_EVERY == 0 or info.step % preset.checkpoint_every == 0 or info.step == preset.steps:
            watch.check()
        yield info
