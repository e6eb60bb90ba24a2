"""One run = one folder: resolved config, checkpoint, exports, metrics. Resumable.

Layout of RUN_DIR: config.json, checkpoint.safetensors (atomic, every N steps and at the end),
turntable.mp4/.gif, views.png (rgb / normals / opacity at held-out cameras), mesh.glb/.obj/.ply,
metrics.json.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdi.io import atomic_write_json
from sdi.priors.base import CountingDenoiser, Denoiser
from sdi.train.checkpoint import load_checkpoint, pack_training_state, restore_training_state, save_checkpoint
from sdi.train.loop import TrainState, TrainingDiverged, new_state, train
from sdi.train.presets import Preset, cpu_sized, get_preset

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"


@dataclass(frozen=True)
class RunConfig:
    """What ``sdi generate`` was asked for; written to RUN_DIR/config.json and read back by --resume."""

    prompt: str
    """Text prompt (a catalog prompt for the embedded prior)."""
    preset: str = "fast"
    """Name of a preset in sdi.train.presets.PRESETS."""
    prior: str = "embedded"
    """'embedded' (catalog multi-view exemplar prior) or sd:PATH (Stable Diffusion folder)."""
    steps: int | None = None
    """Override of the preset's number of steps."""
    seed: int = 0
    """Seed of everything random in the run."""
    resolution: int | None = None
    """Override of the preset's render (and embedded prior) resolution."""

    def resolved_preset(self) -> Preset:
        """The preset with overrides applied; GPU-sized presets shrink to CPU sizes on the embedded prior."""
        preset = get_preset(self.preset)
        if self.prior == "embedded" and preset.resolution > 128:
            preset = cpu_sized(preset)
        if self.steps is not None:
            if self.steps < 1:
                raise ValueError(f"--steps must be positive, got {self.steps}")
            preset = replace(preset, steps=self.steps)
        if self.resolution is not None:
            if self.resolution < 8:
                raise ValueError(f"--resolution must be at least 8 pixels, got {self.resolution}")
            preset = replace(preset, resolution=self.resolution)
        return preset


def load_prior(config: RunConfig, preset: Preset) -> Denoiser:
    """The denoiser named by ``config.prior``; clear errors for unknown prompts and missing folders."""
    if config.prior == "embedded":
        from sdi.priors.multiview import build_multiview_prior

        return build_multiview_prior(config.prompt, preset.resolution, view_conditioning=preset.view_conditioning)
    if config.prior.startswith("sd:"):
        from sdi.priors.stable_diffusion import load_stable_diffusion

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return load_stable_diffusion(config.prior[3:], device=device, view_dependent_prompts=True)
    raise ValueError(f"unknown prior {config.prior!r}; use 'embedded' or sd:PATH")


def save_state(
    run_dir: Path, state: TrainState, config: RunConfig, elapsed: float, calls: int, loss: float | None = None
) -> None:
    """Atomic checkpoint of everything a resume needs (``loss``: the last step's, for a resumed run's metrics)."""
    tensors, meta = pack_training_state(
        state.scene.modules(), {"adam": state.optimizer}, state.generator, state.step,
        {"config": asdict(config), "elapsed_s": elapsed, "denoiser_calls": calls, "final_loss": loss},
    )
    tensors.update({f"rule_state/{k}": v for k, v in state.rule_state.items() if k == "fixed_noise"})
    save_checkpoint(run_dir / CHECKPOINT, tensors, meta)


def restore_state(run_dir: Path, preset: Preset, seed: int) -> tuple[TrainState, dict]:
    """The state saved in RUN_DIR's checkpoint (raises CheckpointError on a bad file)."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    state = new_state(preset, seed)
    plain = {k: v for k, v in tensors.items() if not k.startswith("rule_state/")}
    state.step = restore_training_state(plain, meta, state.scene.modules(), {"adam": state.optimizer}, state.generator)
    state.rule_state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("rule_state/")}
    return state, meta["extra"]


def read_config(run_dir: Path) -> RunConfig:
    """RUN_DIR/config.json as a RunConfig, or a one-line error."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a folder made by `sdi generate`?")
    try:
        return RunConfig(**json.loads(path.read_text())["run"])
    except (ValueError, TypeError, KeyError) as error:  # bad JSON, missing "run", unknown or missing fields
        raise ValueError(f"{path} is not a run config written by `sdi generate` ({error}); "
                         "restore it or start a new run") from None


def train_run(run_dir: Path, config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run in ``run_dir``; returns the training metrics."""
    preset = config.resolved_preset()
    denoiser = CountingDenoiser(load_prior(config, preset))
    rule = preset.rule()
    if resume and (run_dir / CHECKPOINT).exists():
        state, extra = restore_state(run_dir, preset, config.seed)
    else:
        state, extra = new_state(preset, config.seed), {"elapsed_s": 0.0, "denoiser_calls": 0}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG, {"run": asdict(config), "preset": describe(preset)})
    start, info = time.perf_counter(), None
    elapsed = lambda: extra["elapsed_s"] + time.perf_counter() - start  # noqa: E731
    calls = lambda: extra["denoiser_calls"] + denoiser.calls  # noqa: E731
    bar = tqdm(total=preset.steps, initial=state.step, desc=f"{preset.name} {config.prompt!r}", disable=not progress)
    try:
        for info in train(state, preset, rule, denoiser, config.prompt):
            bar.update()
            bar.set_postfix(loss=f"{info.loss:.3g}", t=info.t)
            if state.step % preset.checkpoint_every == 0 or state.step == preset.steps:
                check_finite(state)
                save_state(run_dir, state, config, elapsed(), calls(), info.loss)
    except TrainingDiverged as error:
        kept = (f"the last good checkpoint is kept in {run_dir / CHECKPOINT}" if (run_dir / CHECKPOINT).exists()
                else "no checkpoint was written yet")
        raise TrainingDiverged(f"{error}; {kept}: "
                               "lower the learning rate or change the seed, then --resume or start again") from None
    finally:
        bar.close()
    return {"steps": state.step, "wall_time_s": elapsed(), "denoiser_calls": calls(),
            "final_loss": info.loss if info else extra.get("final_loss"), "preset": preset.name, "rule": rule.name,
            "peak_memory_mb": peak_memory_mb()}


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set (Linux maxrss, KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_finite(state: TrainState) -> None:
    """Never checkpoint NaNs."""
    for name, module in state.scene.modules().items():
        for p in module.parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"non-finite parameters in the {name} at step {state.step}")


def describe(preset: Preset) -> dict:
    """The resolved preset as JSON-friendly values (functions by their repr)."""
    rule = preset.rule()
    return {"name": preset.name, "rule": repr(rule), "steps": preset.steps, "lr": preset.lr, "batch": preset.batch,
            "resolution": preset.resolution, "num_samples": preset.num_samples,
            "radiance_field": repr(preset.radiance_field), "cameras": repr(preset.cameras),
            "shading": preset.shading, "checkpoint_every": preset.checkpoint_every,
            "view_conditioning": preset.view_conditioning}
