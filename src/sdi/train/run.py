"""One run = one folder: resolved config, checkpoint, exports, metrics. Resumable.

Layout of RUN_DIR: config.json, checkpoint.safetensors (atomic, every N steps and at the end),
turntable.mp4/.gif, views.png (rgb / normals / opacity at held-out cameras), mesh.glb (textured),
mesh.obj/.mtl + mesh_albedo.png, mesh.ply (vertex colours), metrics.json, events.out.tfevents.* (TensorBoard).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from sdi.io import atomic_write_json
from sdi.diffusion.denoiser import CountingDenoiser, Denoiser
from sdi.train.checkpoint import load_checkpoint, pack_training_state, restore_training_state, save_checkpoint
from sdi.train.logs import RunLog
from sdi.train.loop import StepInfo, TrainState, TrainingDiverged, new_state, train
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
    device: str | None = None
    """Where the scene and Stable Diffusion run ('cpu', 'cuda', 'cuda:1'); None: CUDA when available for an
    sd: prior, else the CPU. The embedded prior runs on the CPU only."""
    batch: int | None = None
    """Override of the preset's views per step."""
    chunk: int | None = None
    """Override of the preset's rays rendered at a time."""
    gradient_checkpointing_vae: bool | None = None
    """Override of the preset's VAE gradient checkpointing (sd: only)."""
    compile_unet: bool | None = None
    """Override of the preset's torch.compile of the UNet (sd: only; CUDA only)."""

    def resolved_preset(self) -> Preset:
        """The preset with overrides applied; GPU-sized presets shrink to CPU sizes on the embedded prior."""
        preset = get_preset(self.preset)
        if self.prior == "embedded" and preset.resolution > 128:
            preset = cpu_sized(preset)
        return self.with_overrides(preset)

    def with_overrides(self, preset: Preset) -> Preset:
        """``preset`` with the overrides this config gives; a one-line error for a count below its minimum."""
        least = {"steps": 1, "resolution": 8, "batch": 1, "chunk": 1}
        given = {name: getattr(self, name) for name in least if getattr(self, name) is not None}
        for name, value in given.items():
            if value < least[name]:
                raise ValueError(f"--{name} must be at least {least[name]}, got {value}")
        sd_names = ("gradient_checkpointing_vae", "compile_unet")
        sd = {name: getattr(self, name) for name in sd_names if getattr(self, name) is not None}
        return replace(preset, **given, stable_diffusion=replace(preset.stable_diffusion, **sd))


def run_device(config: RunConfig) -> torch.device:
    """The device of ``config``'s scene and prior; a one-line error for a device this machine or prior lacks."""
    if config.device is None:
        return torch.device("cuda" if config.prior.startswith("sd:") and torch.cuda.is_available() else "cpu")
    device = parse_device(config.device)
    if config.prior == "embedded" and device.type != "cpu":
        raise ValueError("the embedded prior runs on the CPU only; drop --device or use --prior sd:PATH")
    return device


def parse_device(spec: str) -> torch.device:
    """``spec`` ('cpu', 'cuda', 'cuda:N') as a device this machine has, or a one-line error."""
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {spec!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec} needs a CUDA GPU, but torch {torch.__version__} sees none; "
                         "use --device cpu or install a CUDA build of torch")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: this machine has only {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_prior(config: RunConfig) -> None:
    """The errors ``load_prior`` raises before loading anything: an unknown prior, words the embedded prior does
    not know, no Stable Diffusion folder (``sdi serve`` reports them before a run waits in its queue)."""
    if config.prior == "embedded":
        from sdi.scene.catalog import parse_prompt

        parse_prompt(config.prompt)
    elif config.prior.startswith("sd:"):
        from sdi.priors.stable_diffusion import resolve_weights

        resolve_weights(config.prior[3:])
    else:
        raise ValueError(f"unknown prior {config.prior!r}; use 'embedded' or sd:PATH")


def load_prior(config: RunConfig, preset: Preset) -> Denoiser:
    """The denoiser named by ``config.prior``; clear errors for unknown prompts and missing folders."""
    check_prior(config)
    if config.prior == "embedded":
        from sdi.priors.multiview import build_multiview_prior

        return build_multiview_prior(config.prompt, preset.resolution, view_conditioning=preset.view_conditioning)
    from sdi.priors.stable_diffusion import load_stable_diffusion

    return load_stable_diffusion(config.prior[3:], device=run_device(config), options=preset.stable_diffusion)


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


def restore_state(
    run_dir: Path, preset: Preset, seed: int, device: torch.device | str = "cpu"
) -> tuple[TrainState, dict]:
    """The state saved in RUN_DIR's checkpoint, mapped to ``device`` (raises CheckpointError on a bad file)."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT)
    state = new_state(preset, seed, device)
    plain = {k: v for k, v in tensors.items() if not k.startswith("rule_state/")}
    state.step = restore_training_state(plain, meta, state.scene.modules(), {"adam": state.optimizer}, state.generator)
    state.rule_state = {k.split("/", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith("rule_state/")}
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


def train_run(
    run_dir: Path, config: RunConfig, resume: bool = False, progress: bool = True, preset: Preset | None = None,
    on_step: Callable[[TrainState, StepInfo], None] | None = None,
) -> dict:
    """Train (or continue) the run in ``run_dir`` on ``run_device(config)``; returns the training metrics.
    ``preset``: a Preset object to train as it is (e.g. an unregistered ablation rule) instead of
    ``config.resolved_preset()``; config.json then names the config's preset but describes this one.
    TensorBoard event files go to ``run_dir`` (``sdi.train.logs``); ``on_step`` is called after every step."""
    preset = preset if preset is not None else config.resolved_preset()
    device = run_device(config)
    denoiser = CountingDenoiser(load_prior(config, preset))
    rule = preset.rule()
    if resume and (run_dir / CHECKPOINT).exists():
        state, extra = restore_state(run_dir, preset, config.seed, device)
    else:
        state, extra = new_state(preset, config.seed, device), {"elapsed_s": 0.0, "denoiser_calls": 0}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG, {"run": asdict(config), "preset": describe(preset)})
    start, info = time.perf_counter(), None
    elapsed = lambda: extra["elapsed_s"] + time.perf_counter() - start  # noqa: E731
    calls = lambda: extra["denoiser_calls"] + denoiser.calls  # noqa: E731
    bar = tqdm(total=preset.steps, initial=state.step, desc=f"{preset.name} {config.prompt!r}", disable=not progress)
    log = RunLog(run_dir, denoiser.decode, state.step, preset.steps)
    try:
        for info in train(state, preset, rule, denoiser, config.prompt):
            log.log(info)
            if on_step is not None:
                on_step(state, info)
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
        log.close()
    return {"steps": state.step, "wall_time_s": elapsed(), "denoiser_calls": calls(),
            "final_loss": info.loss if info else extra.get("final_loss"), "preset": preset.name, "rule": rule.name,
            "device": str(device), "peak_memory_mb": peak_memory_mb(device)}


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this process: CUDA allocations on a CUDA ``device`` (default: whenever CUDA is available),
    else the resident set (Linux maxrss, KiB)."""
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return torch.cuda.max_memory_allocated(device) / 2**20
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
            "view_conditioning": preset.view_conditioning, "chunk": preset.chunk,
            "stable_diffusion": asdict(preset.stable_diffusion)}
