"""One run = one folder: resolved config, checkpoint, exports, metrics. Resumable.

Layout of RUN_DIR: config.json and checkpoint.safetensors (written together, atomically: every N steps, every
60 s of training and at the end), checkpoint.prev.safetensors (the one before), turntable.mp4/.gif, views.png
(rgb / normals / opacity at held-out cameras), mesh.glb (textured), mesh.obj/.mtl + mesh_albedo.png, mesh.ply
(vertex colours), metrics.json, events.out.tfevents.* (TensorBoard). The folder belongs to one run
(``sdi.run_folder``: refused when it holds another, locked against a second writer).
"""

from __future__ import annotations

import json
import math
import re
import resource
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from sdi import run_folder
from sdi.errors import WriteError
from sdi.io import all_or_nothing, atomic_write_json
from sdi.diffusion.denoiser import CountingDenoiser, Denoiser
from sdi.limits import RUN_MINIMUM, check_seed
from sdi.run_folder import CHECKPOINT, CONFIG, PREVIOUS
from sdi.train.checkpoint import (CheckpointError, load_checkpoint, pack_training_state, restore_training_state,
                                  save_checkpoint)
from sdi.train.logs import RunLog
from sdi.train.loop import HELD, SYNC_EVERY, StepInfo, TrainState, TrainingDiverged, new_state, train
from sdi.train.presets import Preset, cpu_sized, get_preset, gpu_sized, views_line, with_views_per_step

CHECKPOINT_SECONDS = 60.0
"""Default wall time between checkpoints, besides every ``preset.checkpoint_every`` steps and the last step."""


@dataclass(frozen=True)
class RunConfig:
    """What ``sdi generate`` was asked for; written to RUN_DIR/config.json and read back by --resume."""

    prompt: str
    """Text prompt (a catalog prompt for the embedded prior)."""
    preset: str = "fast"
    """Name of a preset in sdi.train.presets.PRESETS."""
    prior: str = "embedded"
    """'embedded' (the catalog prior, exact at every camera) or sd:PATH (Stable Diffusion folder)."""
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
    views_per_step: int | None = None
    """K views per step with averaged gradients and steps // K steps (``presets.with_views_per_step``)."""
    antithetic: bool = False
    """With ``views_per_step``: draw the views as antithetic pairs, 180 degrees apart in azimuth."""

    def resolved_preset(self) -> Preset:
        """The preset with overrides applied; GPU-sized presets shrink to CPU sizes on the embedded prior."""
        preset = get_preset(self.preset)
        if self.prior == "embedded" and gpu_sized(preset):
            preset = cpu_sized(preset)
        return self.with_overrides(preset)

    def with_overrides(self, preset: Preset) -> Preset:
        """``preset`` with the overrides this config gives; a one-line error for a count below its minimum."""
        given = {name: getattr(self, name) for name in RUN_MINIMUM if getattr(self, name) is not None}
        for name, value in given.items():
            if value < RUN_MINIMUM[name]:
                raise ValueError(f"--{name} must be at least {RUN_MINIMUM[name]}, got {value}")
        sd_names = ("gradient_checkpointing_vae", "compile_unet")
        sd = {name: getattr(self, name) for name in sd_names if getattr(self, name) is not None}
        preset = replace(preset, **given, stable_diffusion=replace(preset.stable_diffusion, **sd))
        if self.views_per_step is None:
            if self.antithetic:
                raise ValueError("--antithetic pairs the views of a step: give --views-per-step K (even) too")
            return preset
        if self.batch is not None:
            raise ValueError("give --views-per-step or --batch, not both (--views-per-step K sets K views per step)")
        return with_views_per_step(preset, self.views_per_step, self.antithetic)


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
        from sdi.priors.catalog import build_catalog_prior

        return build_catalog_prior(config.prompt, joint_views=preset.joint_views)
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
    tensors.update({f"rule_state/{k}": v.contiguous() for k, v in state.rule_state.items()
                    if k == "fixed_noise" or k.startswith(HELD)})  # a held target: the steps after it resume
    save_checkpoint(run_dir / CHECKPOINT, tensors, meta)


def restore_state(
    run_dir: Path, preset: Preset, seed: int, device: torch.device | str = "cpu"
) -> tuple[TrainState, dict]:
    """The state saved in RUN_DIR's checkpoint, mapped to ``device`` (raises CheckpointError on a bad file,
    saying whether an earlier checkpoint is kept)."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT, remedy=checkpoint_remedy(run_dir))
    state = new_state(preset, seed, device)
    plain = {k: v for k, v in tensors.items() if not k.startswith("rule_state/")}
    state.step = restore_training_state(plain, meta, state.scene.modules(), {"adam": state.optimizer}, state.generator)
    state.rule_state = {k.split("/", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith("rule_state/")}
    return state, meta["extra"]


def checkpoint_remedy(run_dir: Path) -> str:
    """What to do about an unusable checkpoint of RUN_DIR, from what the folder keeps."""
    previous = run_dir / PREVIOUS
    if previous.is_file():
        step = run_folder.checkpoint_meta(previous).get("step")
        return (f"the checkpoint before it (step {step}) is kept in {previous}: move it onto {run_dir / CHECKPOINT} "
                "to go back to it, or start the run again (sdi generate --overwrite)")
    return "no earlier checkpoint is kept: start the run again (sdi generate --overwrite)"


def check_config_matches(run_dir: Path, config: RunConfig, extra: dict) -> None:
    """A one-line error when RUN_DIR's checkpoint was written by another config than its config.json
    (the device may differ: a run may continue or export on another machine)."""
    saved = {k: v for k, v in (extra.get("config") or {}).items() if k != "device"}
    given = {k: v for k, v in asdict(config).items() if k != "device"}
    if saved and saved != given:
        differ = ", ".join(sorted(k for k in given.keys() | saved.keys() if saved.get(k) != given.get(k)))
        raise CheckpointError(f"{run_dir / CONFIG} does not match {run_dir / CHECKPOINT} (they differ in {differ}); "
                              "restore the config.json of that checkpoint or start the run again (--overwrite)")


def check_preset_matches(run_dir: Path, preset: Preset) -> None:
    """A one-line error when resuming would continue RUN_DIR's run on another preset than the one config.json
    describes (a preset an upgrade changed, e.g. ``fast`` taking the multi-view prior): the run would change
    mid-way. A field config.json does not record predates it, so it is compared with the field's default."""
    recorded = json.loads((run_dir / CONFIG).read_text()).get("preset")
    if not isinstance(recorded, dict):
        return
    now = json.loads(json.dumps(describe(preset)))
    defaults = {f.name: f.default for f in fields(Preset) if isinstance(f.default, (bool, int, float, str))}
    recorded = {**defaults, **recorded}
    differ = sorted(k for k in now.keys() & recorded.keys()
                    if _without_addresses(recorded[k]) != _without_addresses(now[k]))
    if differ:
        raise CheckpointError(f"{run_dir} was started on another {preset.name!r} preset than this SDI's (it differs "
                              f"in {', '.join(differ)}), so resuming would change the run mid-way; finish it with "
                              "the SDI version that started it, or start it again (--overwrite)")


def _without_addresses(value):
    """``value`` with the memory addresses of function reprs (``<function f at 0x7f...>``) taken out."""
    return re.sub(r" at 0x[0-9a-f]+", "", value) if isinstance(value, str) else value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def check_field_types(data: dict) -> None:
    """A ValueError naming the first field of ``data`` whose value is not of RunConfig's type for it."""
    hints = typing.get_type_hints(RunConfig)
    for name, value in data.items():
        if name not in hints:
            continue  # RunConfig(**data) names it
        allowed = typing.get_args(hints[name]) or (hints[name],)
        if not any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed):
            raise ValueError(f"field {name!r} is {value!r}, not {hints[name]}")


def read_config(run_dir: Path) -> RunConfig:
    """RUN_DIR/config.json as a RunConfig, or a one-line error."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(run_folder.no_config(run_dir))
    try:
        run = json.loads(path.read_text(), parse_constant=_reject_constant)["run"]
        check_field_types(run)
        config = RunConfig(**run)
        check_seed(config.seed, "seed")
        return config
    except (ValueError, TypeError, KeyError) as error:  # bad JSON, missing "run", unknown, missing or bad fields
        raise ValueError(f"{path} is not a run config written by `sdi generate` ({error}); "
                         "restore it or start a new run") from None


def train_run(
    run_dir: Path,
    config: RunConfig,
    resume: bool = False,
    progress: bool = True,
    preset: Preset | None = None,
    overwrite: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    on_step: Callable[[TrainState, StepInfo], None] | None = None,
) -> dict:
    """Train (or continue) the run in ``run_dir`` on ``run_device(config)``; returns the training metrics.

    ``preset``: a Preset object to train as it is (e.g. an unregistered ablation rule) instead of
    ``config.resolved_preset()``; config.json then names the config's preset but describes this one.
    The folder belongs to this run (``sdi.run_folder.claim``): refused when another process writes into it,
    or when it holds a run (unless ``resume``: continue it, or ``overwrite``: replace it once this run has its
    first checkpoint). Checkpoints come every ``preset.checkpoint_every`` steps, every ``checkpoint_seconds``
    of training and at the last step. TensorBoard event files go to ``run_dir`` (``sdi.train.logs``);
    ``on_step(state, info)`` is called after every step (progress hooks)."""
    preset = preset if preset is not None else config.resolved_preset()
    device = run_device(config)
    with run_folder.claim(run_dir, resume, overwrite) as replaced:
        denoiser = CountingDenoiser(load_prior(config, preset))
        rule = preset.rule()
        if resume:
            state, extra = restore_state(run_dir, preset, config.seed, device)
            check_config_matches(run_dir, config, extra)
            check_preset_matches(run_dir, preset)
        else:
            state, extra = new_state(preset, config.seed, device), {"elapsed_s": 0.0, "denoiser_calls": 0}
        checkpoints = Checkpoints(run_dir, config, preset, checkpoint_seconds, replaced, own=resume)
        start, start_step, info = time.perf_counter(), state.step, None
        elapsed = lambda: extra["elapsed_s"] + time.perf_counter() - start  # noqa: E731
        calls = lambda: extra["denoiser_calls"] + denoiser.calls  # noqa: E731
        views = views_line(preset)
        desc = f"{preset.name} {config.prompt!r}" + (f" [{views}]" if views else "")
        bar = tqdm(total=preset.steps, initial=state.step, desc=desc, disable=not progress)
        log = RunLog(run_dir, denoiser.decode, state.step, preset.steps)
        try:
            for info in train(state, preset, rule, denoiser, config.prompt):
                log.log(info)
                bar.update()
                if state.step % SYNC_EVERY == 0 or state.step == preset.steps:  # reading the loss syncs a GPU
                    bar.set_postfix(loss=f"{info.loss:.3g}", t=info.t)
                if checkpoints.due(state.step):
                    checkpoints.save(state, elapsed(), calls(), info.loss)
                if on_step is not None:
                    on_step(state, info)
        except TrainingDiverged as error:
            raise TrainingDiverged(f"{error}; {checkpoints.kept()}: "
                                   "lower the learning rate or change the seed, then --resume or start again") from None
        except WriteError as error:
            raise WriteError(f"{error}; {checkpoints.kept()}", error.filename, error.errno) from None
        finally:
            bar.close()
            if checkpoints.own:
                log.close()
            else:  # no checkpoint of this run: it leaves nothing in the folder
                log.discard()
    return {"steps": state.step, "start_step": start_step, "wall_time_s": elapsed(), "denoiser_calls": calls(),
            "final_loss": info.loss if info else extra.get("final_loss"), "preset": preset.name, "rule": rule.name,
            "device": str(device), "peak_memory_mb": peak_memory_mb(device)}


@dataclass
class Checkpoints:
    """When and how a run checkpoints: every ``preset.checkpoint_every`` steps, every ``seconds`` of wall time and
    at the last step; config.json in the same all-or-nothing write; the checkpoint before kept as PREVIOUS."""

    run_dir: Path
    config: RunConfig
    preset: Preset
    seconds: float
    replaced: list[Path]
    """Files of the run this one overwrites, removed once this run has its first checkpoint."""
    own: bool = False
    """Whether RUN_DIR's checkpoint is this run's (a resumed run's, or once one is saved)."""
    last: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        return (step % self.preset.checkpoint_every == 0 or step == self.preset.steps
                or time.monotonic() - self.last >= self.seconds)

    def save(self, state: TrainState, elapsed: float, calls: int, loss: float) -> None:
        """Checkpoint ``state`` (never NaNs) with its config.json; keep the previous checkpoint of this run."""
        if not math.isfinite(loss):  # a wall-time checkpoint may come between train()'s divergence checks
            raise TrainingDiverged(f"the loss became {loss} at step {state.step}")
        check_finite(state)
        if self.own:
            run_folder.keep_previous(self.run_dir)
        with all_or_nothing():  # config first: a folder never holds a checkpoint without its config
            atomic_write_json(self.run_dir / CONFIG, {"run": asdict(self.config), "preset": describe(self.preset)})
            save_state(self.run_dir, state, self.config, elapsed, calls, loss)
        run_folder.remove_files(self.replaced)
        self.replaced, self.own, self.last = [], True, time.monotonic()

    def kept(self) -> str:
        """What a failed run leaves, for its error message."""
        if not self.own:
            earlier = "; the run it was to replace is intact" if self.replaced else ""
            return f"no checkpoint of this run was written yet{earlier}"
        path = self.run_dir / CHECKPOINT
        return f"its last checkpoint (step {run_folder.checkpoint_meta(path).get('step')}) is kept in {path}"


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
    return {"name": preset.name, "rule": repr(rule), "steps": preset.steps, "lr": preset.lr,
            "lr_schedule": repr(preset.lr_schedule), "batch": preset.batch,
            "resolution": preset.resolution, "num_samples": preset.num_samples,
            "radiance_field": repr(preset.radiance_field), "cameras": repr(preset.cameras),
            "shading": preset.shading, "checkpoint_every": preset.checkpoint_every,
            "chunk": preset.chunk,
            "stable_diffusion": asdict(preset.stable_diffusion), "render": asdict(preset.render),
            "average_views": preset.average_views, "random_background": preset.random_background,
            "steps_per_target": preset.steps_per_target, "joint_views": preset.joint_views}
