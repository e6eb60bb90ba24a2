"""The training loop, short and explicit: sample cameras, render, apply the rule, regularize, Adam.

``train`` is a generator the caller drives (progress bars, checkpoints, stopping are the caller's).
All randomness comes from one ``torch.Generator``, so a run is deterministic on the CPU and a
resumed run continues exactly where the killed one stopped. The scene, the generator and every
tensor of a step live on one device: the prior's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from sdi.distill.rule import Rule, distill_step, distillation_loss
from sdi.diffusion.denoiser import Denoiser
from sdi.scene.fields import GridField, GridFieldConfig, HashGridField, SolidBackground
from sdi.scene.regularizers import (
    convexity_loss,
    image_axes,
    opacity_loss,
    orientation_loss,
    sparsity_loss,
    z_variance_loss,
)
from sdi.scene.renderer import OccupancyGrid, RenderOutput, render
from sdi.train.presets import Preset


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


def build_scene(preset: Preset, device: torch.device | str = "cpu") -> Scene:
    """A fresh scene for ``preset`` on ``device`` (parameters drawn on the CPU from torch's default generator,
    so they do not depend on the device: seed it first)."""
    cfg = preset.radiance_field
    field_module = GridField(cfg) if isinstance(cfg, GridFieldConfig) else HashGridField(cfg)
    return Scene(field_module.to(device), SolidBackground().to(device), OccupancyGrid().to(device))


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
    """What one step did, for progress bars and metrics."""

    step: int
    loss: float
    distill: float
    t: int
    regularizers: dict[str, float]
    grad_norm: float = math.nan
    """L2 norm of the gradient of every trained parameter, before Adam."""
    render: Tensor | None = None
    """(B, 3, H, W) this step's render in [0, 1], detached (for logs and live previews)."""
    target: Tensor | None = None
    """The rule's target ``x0 - grad`` in the prior's space, detached (``denoiser.decode`` shows it)."""


def sample_shading(preset: Preset, generator: torch.Generator) -> str:
    """DreamFusion's random choice among albedo / lambertian / textureless."""
    u, total = torch.rand((), generator=generator, device=generator.device).item(), 0.0
    for mode, probability in preset.shading:
        total += probability
        if u < total:
            return mode
    return preset.shading[-1][0]


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


def training_step(state: TrainState, preset: Preset, rule: Rule, denoiser: Denoiser, prompt: str) -> StepInfo:
    """One step: cameras -> render -> Eq. 10 update of the encoded render -> regularizers -> Adam."""
    g, scene, progress = state.generator, state.scene, state.step / max(preset.steps - 1, 1)
    scene.occupancy.update(state.step, scene.field.density, g)
    cameras = preset.cameras.sample(preset.batch, preset.resolution, g)
    shading = sample_shading(preset, g)
    lights = sample_lights(cameras, g) if shading != "albedo" else None
    out = render(scene.field, scene.background, cameras, preset.num_samples, shading, lights, g, scene.occupancy,
                 chunk=preset.chunk)
    latent = denoiser.encode(out.rgb * 2 - 1)
    update = distill_step(rule, denoiser, latent, state.step, preset.steps, prompt, g, state.rule_state, cameras)
    distill = distillation_loss(latent, update.target)  # d/d latent = update.grad / (B numel)
    regs = regularizers(out, preset, progress)
    loss = distill + sum(regs.values())
    if not math.isfinite(loss.item()):
        raise TrainingDiverged(f"the loss became {loss.item()} at step {state.step}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for g in state.optimizer.param_groups for p in g["params"]
                                               if p.grad is not None])
    state.optimizer.step()
    state.step += 1
    return StepInfo(state.step, loss.item(), distill.item(), update.levels.t, {k: v.item() for k, v in regs.items()},
                    grad_norm.item(), out.rgb.detach(), update.target.detach())


def train(state: TrainState, preset: Preset, rule: Rule, denoiser: Denoiser, prompt: str) -> Iterator[StepInfo]:
    """Run from ``state.step`` to ``preset.steps``, yielding after every step."""
    while state.step < preset.steps:
        yield training_step(state, preset, rule, denoiser, prompt)
