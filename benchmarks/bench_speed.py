"""Seconds, UNet evaluations and peak memory per score-distillation iteration: SDS vs SDI.

Builds a UNet and VAE with Stable Diffusion 2.1-base's architecture (published configs, written
below) with RANDOM weights, so nothing is downloaded; random (77 x 1024) text embeddings stand in
for CLIP (one per view prompt: Perp-Neg is on in every preset). One iteration, for a (B, 3, R, R)
render that requires grad (the renderer's output): resize to 512 x 512, encode through the VAE with
gradients, then the library's own rules, as the presets run them, on a side view (az 60):

- sds: ``sds_threestudio`` (threestudio's dreamfusion-sd: t ~ U{20..980}, CFG 100, Perp-Neg: one call of 4 images);
- sdi: ``sdi_reference`` (the authors' code: t annealed 0.98 -> 0.25 over the timed iterations, sampled evenly
  so the mean matches a full run; the leading 10-step inversion grid below t from -99, CFG -7.5, entropy after
  every step; then the forward CFG 7.5 call on the inverted latent);
- sdi-paper: ``sdi_paper`` (int(10 t) inversion steps up to t + tau, the forward call of Eq. 10);

and back-propagate the rule's loss (``Update.loss``) through the encoder to the render. It also prints the
UNet calls per step each SDI rule makes averaged over the whole 10k-step annealed schedule (from the rule's own
schedule and inversion path), next to the authors' code's (their formulas, restated here: 8.625).

``--presets NAMES`` takes the rules of named presets (``sdi.train.presets.get_preset``) instead of ``--rules``;
with ``--scene`` an iteration is the preset's whole training step (``sdi.train.loop.training_step``: cameras,
the preset's field and renderer at ``--render``, VAE, rule, regularizers, backward, Adam), so the 10k-step
projection includes the renderer. ``--compare-compile`` runs every row eager, then with the UNet compiled, in
one process; ``--json`` writes the rows.

    python benchmarks/bench_speed.py --device cuda --dtype bf16 --render 512 --iters 20
    python benchmarks/bench_speed.py --presets sdi-paper,sdi-reference --scene --render 512 --compare-compile
    python benchmarks/bench_speed.py --tiny            # CPU, the tiny test model of tests/tiny_sd.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from sdi.diffusion.denoiser import CountingDenoiser
from sdi.diffusion.schedules import sd_alphas_cumprod
from sdi.diffusion.views import view_prompts
from sdi.distill.noise import Inversion
from sdi.distill.rule import distill_step
from sdi.distill.sdi import sdi_paper, sdi_reference
from sdi.distill.sds import sds_threestudio
from sdi.priors.stable_diffusion import StableDiffusionOptions, StableDiffusionPrior, peak_memory_bytes
from sdi.scene.cameras import orbit_cameras

# stabilityai/stable-diffusion-2-1-base, unet/config.json and vae/config.json
SD21_BASE_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=False,
    dual_cross_attention=False,
    only_cross_attention=False,
)
SD21_BASE_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
TEXT_TOKENS, SD_TEXT_WIDTH, SD_RESOLUTION = 77, 1024, 512
PROMPT = "a DSLR photo of a white fluffy cat"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_prior(args) -> tuple[StableDiffusionPrior, int]:
    """Random-weight SD 2.1-base (or the tiny test model) and the image resolution it encodes."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # silence the cast-with-to() advice: random weights, nothing to keep fp32
    torch.manual_seed(0)
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import tiny_sd

        unet, vae, width, resolution = tiny_sd.tiny_unet(), tiny_sd.tiny_vae(), tiny_sd.HIDDEN, tiny_sd.IMAGE_SIZE
    else:
        unet, vae = UNet2DConditionModel(**SD21_BASE_UNET), AutoencoderKL(**SD21_BASE_VAE)
        width, resolution = SD_TEXT_WIDTH, SD_RESOLUTION
    dtype = DTYPES[args.dtype]
    unet = unet.to(args.device, dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    vae = vae.to(args.device, dtype)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    options = StableDiffusionOptions(view_dependent_prompts=True, compile_unet=args.compile,
                                     gradient_checkpointing_vae=args.grad_checkpoint_vae)
    prior = StableDiffusionPrior(unet, vae, None, None, scheduler.alphas_cumprod, "epsilon", options)
    for text in (*view_prompts(PROMPT), ""):  # stand-ins for CLIP embeddings
        prior.text_embeddings[text] = torch.randn(1, TEXT_TOKENS, width, device=args.device).to(dtype)
    return prior, resolution


def encode_render(prior, render: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the render to the model resolution (as threestudio does) and encode it with gradients."""
    if render.shape[-1] != resolution:
        render = F.interpolate(render, (resolution, resolution), mode="bilinear")
    return prior.encode(render.tanh())  # tanh: keep the stand-in render in [-1, 1]


RULES = {"sds": sds_threestudio, "sdi": sdi_reference, "sdi-paper": sdi_paper}
"""The library's own rules (no copy of them here), as the presets sds-threestudio, sdi-reference and sdi-paper
run them."""
SCHEDULE_STEPS = 10_000
"""Length of the annealed schedule the calls per step are averaged over (the authors' trainer_max_steps)."""


def calls_over_schedule(name: str, steps: int = SCHEDULE_STEPS) -> float:
    """Batched UNet calls per step of an SDI rule over its whole annealed schedule: the inversion path the rule's
    estimator builds at each step's levels, plus the forward call (no UNet runs; t + tau drawn from a seed)."""
    rule, gen, calls = RULES[name](), torch.Generator().manual_seed(0), 0
    inversion = getattr(rule.noise, "inner", rule.noise)  # sdi-paper wraps it in WithEntropy
    if not isinstance(inversion, Inversion):
        return 1.0
    ac = sd_alphas_cumprod()
    for step in range(steps):
        levels = rule.timesteps(step, steps, len(ac), gen)
        calls += len(inversion.grid(ac, levels.t_kappa, levels.t)) + 1
    return calls / steps


def authors_calls_over_schedule(steps: int = SCHEDULE_STEPS) -> float:
    """The same count from the authors' formulas, restated (threestudio update_step + get_inversion_timesteps):
    t = int(1000 (0.73 (1 - step / 10000) + 0.25)), one call per leading-grid point {1, 101, ..., 901} below t,
    one from -99, one forward call; delta does not change the count."""
    total = 0
    for step in range(steps):
        t = int(1000 * ((0.98 - 0.25) * (1 - step / 10000) + 0.25))
        total += sum(1 for k in range(10) if 100 * k + 1 < t) + 1 + 1
    return total / steps


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_rule(name: str, prior, resolution: int, args) -> dict:
    counter, rule = CountingDenoiser(prior), RULES[name]()
    render = torch.empty(args.batch, 3, args.render, args.render, device=args.device).uniform_(-1, 1)
    render.requires_grad_()
    gen, state = torch.Generator().manual_seed(0), {}
    side = torch.full((args.batch,), 60.0, device=args.device)
    cameras = orbit_cameras(torch.full_like(side, 10.0), side, 2.0, 60.0, args.render)

    def iteration(step: int, iters: int) -> None:
        render.grad = None
        z = encode_render(prior, render, resolution).float()
        with torch.no_grad():
            # sdi-reference's schedule is the authors' 10k steps: walk it evenly over the timed iterations
            at = step * SCHEDULE_STEPS // iters if name == "sdi" else step
            update = distill_step(rule, counter, z, at, iters, PROMPT, gen, state, cameras)
        update.loss(z).backward()

    return timed(name, lambda step: iteration(step, args.iters), lambda: iteration(0, 1), counter, args)


def timed(name: str, iteration, warmup, counter: CountingDenoiser, args) -> dict:
    """One row: ``warmup()`` ``args.warmup`` times, then ``iteration(step)`` for the ``args.iters`` timed steps;
    seconds, UNet calls and evaluations per iteration, peak memory, the 10k-step projection."""
    for _ in range(args.warmup):
        warmup()
    sync(args.device)
    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter.calls = counter.evaluations = 0
    start = time.perf_counter()
    for step in range(args.iters):
        iteration(step)
    sync(args.device)
    seconds = (time.perf_counter() - start) / args.iters
    return dict(rule=name, s_per_it=seconds, calls=counter.calls / args.iters, evals=counter.evaluations / args.iters,
                peak_gb=peak_memory_bytes(args.device) / 2**30, min_10k=seconds * 10_000 / 60)


def preset_for(name: str, args):
    """The named preset with its steps set to the timed iterations (t anneals over them as over a full run)
    and, for ``--scene``, rendering at ``--render`` (on the embedded prior's sizes when --tiny)."""
    from sdi.train.presets import get_preset

    preset = get_preset(name)
    if args.tiny:  # a GPU preset's hash grid at CPU-test sizes
        from sdi.scene.fields import HashGridFieldConfig

        field = preset.radiance_field
        if isinstance(field, HashGridFieldConfig):
            field = replace(field, n_levels=4, log2_hashmap_size=12, hidden_dim=16)
        preset = replace(preset, radiance_field=field, num_samples=32,
                         render=replace(preset.render, occupancy_resolution=16))
    return replace(preset, steps=max(args.iters, 1), resolution=args.render)


def bench_preset(name: str, prior, resolution: int, args) -> dict:
    """One row for preset ``name``: its rule alone (as ``bench_rule``), or with ``--scene`` its training step."""
    if not args.scene:
        RULES.setdefault(name, lambda: preset_for(name, args).rule())
        return bench_rule(name, prior, resolution, args)
    from sdi.train.loop import new_state, training_step

    preset = preset_for(name, args)
    counter, rule = CountingDenoiser(prior), preset.rule()
    state = new_state(preset, seed=0, device=args.device)

    def warmup() -> None:
        training_step(state, preset, rule, counter, PROMPT)
        state.step = 0  # the timed iterations walk the whole t schedule

    return timed(name, lambda step: training_step(state, preset, rule, counter, PROMPT), warmup, counter, args)


def preset_rows(names: list[str], prior, resolution: int, args) -> list[dict]:
    """One row per preset (eager, then compiled with --compare-compile); a preset that fails gives a row with
    its error. With --json the file is rewritten after every row, so a run killed at its time limit keeps them."""
    rows: list[dict] = []
    modes = ["compiled" if args.compile else "eager"] + (["compiled"] if args.compare_compile and not args.compile
                                                         else [])
    for i, mode in enumerate(modes):
        if i > 0 and torch.device(args.device).type != "cuda":
            rows += [{"rule": n, "unet": mode, "error": "torch.compile of the UNet runs on CUDA only"} for n in names]
            write_json(args, resolution, rows)
            break
        if i > 0:
            compile_prior_unet(prior)
        for name in names:
            try:
                rows.append({**bench_preset(name, prior, resolution, args), "unet": mode})
            except Exception as error:  # noqa: BLE001 - one preset's failure (e.g. unknown name) is a row
                rows.append({"rule": name, "unet": mode, "error": f"{type(error).__name__}: {error}"[:300]})
            write_json(args, resolution, rows)
    return rows


def write_json(args, resolution: int, rows: list[dict]) -> None:
    if args.json:
        settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
        Path(args.json).write_text(json.dumps({"settings": settings, "model_resolution": resolution, "rows": rows},
                                              indent=1))


def compile_prior_unet(prior) -> None:
    """``torch.compile`` the prior's UNet in place (what StableDiffusionOptions.compile_unet does on CUDA)."""
    prior.unet = torch.compile(prior.unet)


def print_table(rows: list[dict], args, resolution: int) -> None:
    model = "tiny test model" if args.tiny else "SD 2.1-base architecture (random weights)"
    print(f"# {model}, {args.device} {args.dtype}, batch {args.batch}, render {args.render} -> {resolution}, "
          f"{args.iters} iters after {args.warmup} warmup, compile={args.compile}, "
          f"grad-checkpoint-vae={args.grad_checkpoint_vae}")  # fmt: skip
    columns = ("s/iter", 9), ("UNet calls/iter", 16), ("UNet evals/iter", 16), ("peak GB", 8), ("10k steps (min)", 16)
    header = f"{'rule':<9} " + " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        name = r["rule"] + (" (compiled UNet)" if r.get("unet") == "compiled" else "")
        print(f"{name:<9} {r['s_per_it']:>9.4f} {r['calls']:>16.2f} {r['evals']:>16.2f} "
              f"{r['peak_gb']:>8.2f} {r['min_10k']:>16.1f}")  # fmt: skip
    print("(calls: batched UNet calls, cond + uncond in one; evals: branch x image evaluations; "
          "peak GB from torch.cuda.max_memory_allocated, 0 off CUDA)")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--render", type=int, default=None, help="render side, e.g. 128/256/512 (default: model resolution)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rules", default="sds,sdi", help="comma-separated subset of " + ",".join(RULES))
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA only)")
    p.add_argument("--grad-checkpoint-vae", action="store_true")
    p.add_argument("--tiny", action="store_true", help="the tiny random model of tests/tiny_sd.py (runs on CPU)")
    p.add_argument("--presets", default=None, help="comma-separated preset names: their rules instead of --rules")
    p.add_argument("--scene", action="store_true", help="with --presets: time the whole training step (renderer too)")
    p.add_argument("--compare-compile", action="store_true", help="every row eager, then with the UNet compiled")
    p.add_argument("--json", default=None, help="write the rows (and the settings) to this file")
    args = p.parse_args(argv)
    if args.scene and not args.presets:
        p.error("--scene needs --presets (the scene, renderer and rule of a training preset)")
    if args.dtype is None:
        args.dtype = "bf16" if torch.device(args.device).type == "cuda" else "fp32"
    unknown = set(args.rules.split(",")) - set(RULES)
    if unknown:
        p.error(f"unknown rules {sorted(unknown)}; choose from {sorted(RULES)}")
    if not args.tiny and torch.device(args.device).type != "cuda":
        print("note: SD 2.1-base's architecture on CPU is very slow; use --tiny for a smoke run", file=sys.stderr)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    prior, resolution = build_prior(args)
    args.render = args.render or resolution
    if args.presets:
        rows = preset_rows(args.presets.split(","), prior, resolution, args)
    else:
        rows = [bench_rule(name, prior, resolution, args) for name in args.rules.split(",")]
        write_json(args, resolution, rows)
    print_table([r for r in rows if "error" not in r], args, resolution)
    per_step = {name: calls_over_schedule(name) for name in ("sdi", "sdi-paper")}
    print(f"UNet calls per step over the {SCHEDULE_STEPS}-step annealed schedule: sdi-reference {per_step['sdi']:.3f} "
          f"(the authors' code: {authors_calls_over_schedule():.3f}), sdi-paper {per_step['sdi-paper']:.3f}, sds 1")
    by_rule = {r["rule"]: r for r in rows}
    if {"sds", "sdi"} <= set(by_rule):
        print(f"sdi / sds time per iteration: {by_rule['sdi']['s_per_it'] / by_rule['sds']['s_per_it']:.2f}x")
    return rows


if __name__ == "__main__":
    main()
