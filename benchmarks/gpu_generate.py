"""End-to-end ``sdi generate`` on a random-weight Stable Diffusion 2.1-base, with the time of every stage of a step.

Writes a diffusers folder with SD 2.1-base's architecture and RANDOM weights, so nothing is downloaded: the
UNet and VAE of bench_speed.py's published configs, SD 2.1's text encoder (the OpenCLIP ViT-H/14 text
tower as ``CLIPTextModel``: 23 layers, width 1024, 16 heads, GELU) and the byte-level tokenizer of
tests/tiny_sd.py. Then trains on it exactly what ``sdi generate "..." --prior sd:FOLDER --preset sdi-paper
--steps 100`` trains (``train_run``: run folder, checkpoints, metrics; then the exports), in bf16 (random fp16
weights overflow), with stage timers (CUDA events, one sync at the end) around the renderer's forward,
the VAE encode, the UNet calls of the inversion and of the forward prediction, the backward, Adam, the
occupancy-grid update and the regularizers. One step after the warm-up is run under
``torch.cuda.set_sync_debug_mode("warn")`` (on the CPU: ``sdi.profiling.SyncCounter``) to count its syncs.

    python benchmarks/gpu_generate.py --json out/b.json              # GPU: 100 steps at 512
    python benchmarks/gpu_generate.py --tiny --json out/b.json       # CPU: tiny model, 3 steps
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tiny_sd: the byte-level tokenizer, the tiny model
sys.path.insert(0, str(HERE))

import tiny_sd  # noqa: E402

import sdi.train.loop as loop  # noqa: E402
import sdi.train.run as run  # noqa: E402
from sdi.profiling import StageTimer, SyncCounter  # noqa: E402
from sdi.scene.occupancy import OccupancyGrid  # noqa: E402

PROMPT = "a DSLR photo of a white fluffy cat"
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
"""stabilityai/stable-diffusion-2-1-base, text_encoder/config.json (the fields that shape the model)."""


def write_random_sd21(folder: Path, device: str) -> Path:
    """A diffusers folder of SD 2.1-base's architecture with random bf16 weights (built on ``device``)."""
    from bench_speed import SD21_BASE_UNET, SD21_BASE_VAE
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vocab = tiny_sd.tiny_vocab()
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    with torch.device(device):
        modules = {"unet": UNet2DConditionModel(**SD21_BASE_UNET), "vae": AutoencoderKL(**SD21_BASE_VAE),
                   "text_encoder": CLIPTextModel(CLIPTextConfig(**SD21_TEXT, **special))}
    for name, module in modules.items():
        module.to(torch.bfloat16).save_pretrained(folder / name)
    tiny_sd.write_tiny_tokenizer(folder / "tokenizer")
    tiny_sd.tiny_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(tiny_sd.MODEL_INDEX, indent=2))
    return folder


class TimedDenoiser:
    """A Denoiser whose encode and UNet calls are timed; calls made inside the rule's noise estimator count as
    the inversion's, the others as the forward prediction's."""

    def __init__(self, inner, timer: StageTimer):
        self.inner, self.timer, self.alphas_cumprod = inner, timer, inner.alphas_cumprod
        self.in_inversion, self.images = False, Counter()

    def predict_eps(self, x_t, t, prompts, cameras=None):
        stage = "unet_inversion" if self.in_inversion else "unet_forward"
        self.images[stage] += len(prompts) * x_t.shape[0]
        with self.timer.stage(stage):
            return self.inner.predict_eps(x_t, t, prompts, cameras)

    def encode(self, image):
        with self.timer.stage("vae_encode"):
            return self.inner.encode(image)

    def decode(self, latent):
        return self.inner.decode(latent)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def timed_rule(rule, denoiser: TimedDenoiser, timer: StageTimer):
    """``rule`` whose noise estimator (the inversion) is timed as a whole and labels its UNet calls."""

    def noise(query):
        denoiser.in_inversion = True
        try:
            with timer.stage("inversion_total"):
                return rule.noise(query)
        finally:
            denoiser.in_inversion = False

    return replace(rule, noise=noise)


@contextlib.contextmanager
def patched(owner, name: str, make):
    """Temporarily replace ``owner.name`` by ``make(original)``."""
    real = getattr(owner, name)
    setattr(owner, name, make(real))
    try:
        yield
    finally:
        setattr(owner, name, real)


def timed(timer: StageTimer, stage: str):
    def make(real):
        def wrapper(*args, **kwargs):
            with timer.stage(stage):
                return real(*args, **kwargs)
        return wrapper
    return make


def count_syncs(step_fn, device: torch.device) -> dict:
    """Syncs of one call of ``step_fn``: CUDA's sync debug mode on a GPU, else ``SyncCounter``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step_fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        return {"method": "torch.cuda.set_sync_debug_mode", "count": sum(sites.values()), "sites": dict(sites)}
    with SyncCounter() as counter:
        step_fn()
    return {"method": "sdi.profiling.SyncCounter (host reads; host-only tensors included)", "count": counter.total,
            "sites": dict(counter.by_site)}


def preset_for(args, config):
    preset = config.resolved_preset()
    if args.tiny:  # the sdi-paper hash grid and renderer at CPU-test sizes
        field = replace(preset.radiance_field, n_levels=4, log2_hashmap_size=12, hidden_dim=16)
        preset = replace(preset, radiance_field=field, num_samples=32, checkpoint_every=args.steps,
                         render=replace(preset.render, occupancy_resolution=16))
    if args.compile_field is not None:
        preset = replace(preset, render=replace(preset.render, compile_field=args.compile_field))
    return preset


def generate(args) -> dict:
    device = torch.device(args.device)
    timer = StageTimer(device)
    work = Path(args.work or tempfile.mkdtemp(prefix="sdi-gpu-check-"))
    for scratch in ("sd", "run"):  # ours: a fresh model and run folder every time
        shutil.rmtree(work / scratch, ignore_errors=True)
    start = time.perf_counter()
    folder = (tiny_sd.build_tiny_sd(work / "sd") if args.tiny else write_random_sd21(work / "sd", args.device))
    build_s = time.perf_counter() - start
    resolution = 16 if args.tiny else args.resolution
    config = run.RunConfig(PROMPT, args.preset, f"sd:{folder}", steps=args.steps, seed=0, resolution=resolution,
                           device=args.device)
    preset = preset_for(args, config)
    holder, renders, step_ends, syncs = {}, [], [], {}

    def load_prior(cfg, p):
        import sdi.priors.stable_diffusion as sd

        with patched(sd, "default_dtype", lambda make: lambda dev: torch.bfloat16 if torch.device(dev).type == "cuda"
                     else torch.float32):
            holder["denoiser"] = TimedDenoiser(real_load(cfg, p), timer)
        return holder["denoiser"]

    real_load, real_step = run.load_prior, loop.training_step
    rule_factory = preset.rule
    timed_preset = replace(preset, rule=lambda: timed_rule(rule_factory(), holder["denoiser"], timer))

    def render(*a, **k):
        with timer.stage("render_forward"):
            out = real_render(*a, **k)
        renders.append((out.n_evaluated, out.n_with_grad, out.n_shaded, out.rgb.shape[0]))
        return out

    def training_step(state, *a, **k):
        if state.step == args.sync_step and not syncs:
            out = {}
            syncs.update(count_syncs(lambda: out.setdefault("info", real_step(state, *a, **k)), device))
            info = out["info"]
        else:
            info = real_step(state, *a, **k)
        step_ends.append(time.perf_counter())
        return info

    real_render = loop.render
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(run, "load_prior", lambda real: load_prior))
        stack.enter_context(patched(loop, "render", lambda real: render))
        stack.enter_context(patched(loop, "training_step", lambda real: training_step))
        stack.enter_context(patched(loop, "regularizers", timed(timer, "regularizers")))
        stack.enter_context(patched(torch.Tensor, "backward", timed(timer, "backward")))
        stack.enter_context(patched(torch.optim.Adam, "step", timed(timer, "optimizer")))
        stack.enter_context(patched(OccupancyGrid, "update", timed(timer, "occupancy_update")))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train_start = time.perf_counter()
        metrics = run.train_run(work / "run", config, progress=not args.quiet, preset=timed_preset)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - train_start
    stages = timer.summary()
    steps = metrics["steps"]
    per_step = {k: v / steps for k, v in stages.items()}
    accounted = ("render_forward", "vae_encode", "inversion_total", "unet_forward", "backward", "optimizer",
                 "occupancy_update", "regularizers")
    per_step["other"] = train_s / steps - sum(per_step.get(k, 0.0) for k in accounted)
    warm = min(args.warm_steps, max(steps - 1, 0))
    steady = (step_ends[-1] - step_ends[warm - 1]) / (steps - warm) if warm > 0 else train_s / steps
    export = {}
    if args.export:  # what `sdi generate` does after training (sdi.export.run_outputs.export_run), one by one
        from sdi.export import run_outputs

        state, _ = run.restore_state(work / "run", preset, config.seed, device)
        state.scene.field.eval()
        size = min(2 * preset.resolution, 256)
        for name, fn in (("turntable", lambda: run_outputs.export_turntable(state.scene, work / "run", size)),
                         ("views", lambda: run_outputs.export_views(state.scene, work / "run", size)),
                         ("mesh", lambda: run_outputs.export_mesh(state.scene, work / "run"))):
            export_start = time.perf_counter()
            try:
                fn()
                export[name] = {"seconds": time.perf_counter() - export_start}
            except Exception as error:  # noqa: BLE001 - reported: the device machine lacks ffmpeg for the video
                export[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    views = sum(r[3] for r in renders) or 1
    denoiser = holder["denoiser"]
    return {
        "preset": args.preset, "steps": steps, "render_resolution": preset.resolution,
        "num_samples": preset.num_samples, "device": str(device), "dtype": "bf16" if device.type == "cuda" else "fp32",
        "render": {k: v for k, v in vars(preset.render).items()}, "build_model_s": build_s, "train_s": train_s,
        "s_per_step": train_s / steps, "s_per_step_steady": steady, "steady_after_steps": warm,
        "projection_10k_steps_min": steady * 10_000 / 60, "stages_s_per_step": per_step,
        "stage_calls": dict(timer.counts),
        "unet_calls_per_step": metrics["denoiser_calls"] / steps,
        "unet_images_per_step": {k: v / steps for k, v in denoiser.images.items()},
        "peak_memory_gb": metrics["peak_memory_mb"] / 1024, "syncs_in_one_step": syncs or None,
        "sync_step": args.sync_step,
        "samples_per_view": {"evaluated": sum(r[0] for r in renders) / views,
                             "with_grad": sum(r[1] for r in renders) / views,
                             "shaded": sum(r[2] for r in renders) / views},
        "final_loss": metrics["final_loss"], "export": export or None,
        "hash_encoding": "tinycudann" if device.type == "cuda" and importlib.util.find_spec("tinycudann")
        else "pure PyTorch (fused backward)",
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="sdi-paper")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--compile-field", default=None, action=argparse.BooleanOptionalAction,
                   help="override the preset's torch.compile of the field (CUDA only)")
    p.add_argument("--sync-step", type=int, default=5, help="the step whose syncs are counted")
    p.add_argument("--warm-steps", type=int, default=10, help="steps left out of the steady-state time per step")
    p.add_argument("--export", action=argparse.BooleanOptionalAction, default=True, help="run the exports too")
    p.add_argument("--work", default=None, help="folder for the model and the run (default: a temporary one)")
    p.add_argument("--tiny", action="store_true", help="tests/tiny_sd.py's model and a tiny hash grid, 3 steps, CPU")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.sync_step, args.warm_steps = min(args.steps, 3), 1, 1
    result = generate(args)
    print(json.dumps({k: result[k] for k in ("s_per_step", "s_per_step_steady", "stages_s_per_step",
                                             "peak_memory_gb", "unet_calls_per_step")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
