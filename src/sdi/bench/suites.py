"""The suites of ``sdi bench``: grids of ``Job`` and the job functions ``run_grid`` calls in worker processes.

| suite | what | job function |
|---|---|---|
| ``2d`` | DDIM vs SDS, SDI, SDI-cached, ISM, kappa variants, NFSD, CSD on a closed-form prior (Fig. 1) | ``job_2d`` |
| ``3d`` | SDI, SDS, ISM, NFSD, CSD at CFG 7.5 on catalog objects, scored against the ground truth | ``job_3d`` |
| ``ablations`` | Sec. 6.2: Eq. 8 error per t per kappa estimator (Fig. 9) and CFG pair (Fig. 10); | ``job_eq8``, |
| | short 3D runs for CFG pairs, inversion steps (Fig. 11), t annealing, paper vs reference numbers | ``job_3d_rule`` |
| ``sd`` | the paper's 43 prompts on Stable Diffusion, CLIP score and CLIP-IQA over 50 views (Table 1) | ``job_sd`` |
| ``views`` | K = 1 vs K = 2 uniform vs K = 2 antithetic views per step at equal denoiser images | ``job_views`` |
| | (``benchmarks/bench_views.py``; not an ``sdi bench`` suite) | |

Every job function takes a ``Job`` and returns a flat dict of metrics (one row of ``runs.csv``). 3D jobs
train into ``params["runs_dir"]/<job key>/`` (config.json + checkpoint, so ``sdi export`` works on them).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from sdi.bench.runner import Job

SUITES = ("2d", "3d", "ablations", "sd")

# ----------------------------------------------------------------------------------------------- common


def peak_memory_mb() -> float:
    """``sdi.train.run.peak_memory_mb``, imported when a job reports it (importing this module needs no torch)."""
    from sdi.train.run import peak_memory_mb as peak

    return peak()


def run_dir_of(job: Job) -> Path:
    """Where a 3D job trains: ``runs_dir/<key>``."""
    return Path(job.params_dict["runs_dir"]) / job.key


def fit(run_dir: Path, config, preset) -> tuple[object, dict] | None:
    """``train_run`` of ``preset`` (a ``Preset`` object, possibly unregistered: ablation rules) without a progress
    bar. Returns the trained scene (from the final checkpoint) and metrics, or None when the loss became NaN."""
    from sdi.train.loop import TrainingDiverged
    from sdi.train.run import restore_state, train_run

    try:
        trained = train_run(run_dir, config, progress=False, preset=preset, overwrite=True)  # a re-run replaces it
    except TrainingDiverged:
        return None
    state, _ = restore_state(run_dir, preset, config.seed, trained["device"])
    return state.scene, {"train_s": trained["wall_time_s"], "denoiser_calls": trained["denoiser_calls"],
                         "steps": trained["steps"]}


# ------------------------------------------------------------------------------------------------- 2d

BENCH_2D_METHODS = ("ddim", "sds", "sdi", "sdi-cached", "ism", "random-fixed", "fixed-point", "sgd", "nfsd", "csd")
"""Methods of the 2D suite: ``sdi.twod.METHODS_2D`` plus NFSD and CSD (SDS's step size 0.1)."""


def method_2d(name: str, cfg: float):
    """A ``Method2D`` by name: the 2D runner's own methods, plus NFSD and CSD registered here."""
    from sdi.distill.csd import csd
    from sdi.distill.nfsd import nfsd
    from sdi.twod import METHODS_2D, Method2D

    extra: dict[str, Callable] = {
        "nfsd": lambda c: Method2D(nfsd(c, negative=""), lr=0.1),  # the exemplar prior knows only its labels
        "csd": lambda c: Method2D(csd(c), lr=0.1),
    }
    table = {**METHODS_2D, **extra}
    if name not in table:
        raise ValueError(f"unknown 2D method {name!r}; choose from {', '.join(BENCH_2D_METHODS)}")
    return table[name](cfg)


def grid_2d(
    prompts=("checker", "dots"), seeds: int = 3, steps: int = 50, methods=BENCH_2D_METHODS, size: int = 32,
    cfg: float = 7.5, prior: str = "patches", patch: int = 8,
) -> list[Job]:
    """One job per method x built-in label x seed, on the closed-form ``prior`` ("patches" or "exemplar")."""
    from sdi.twod import PRIORS_2D

    check_names("2D method", methods, BENCH_2D_METHODS)
    check_names("2D prior", (prior,), PRIORS_2D)
    params = {"steps": steps, "size": size, "cfg": cfg, "prior": prior, "patch": patch}
    return [Job("2d", m, p, s, params) for p in prompts for s in range(seeds) for m in methods]


def job_2d(job: Job) -> dict:
    """Run DDIM and the job's method from the seed's noise; distance and detail relative to the DDIM sample,
    distance to the prior's nearest sample."""
    import torch

    from sdi.data.builtin import builtin_images
    from sdi.twod import image_prior, measure, run_ddim, run_rule, seed_noise

    p = job.params_dict
    size, steps, cfg = int(p["size"]), int(p["steps"]), float(p["cfg"])
    prior = image_prior(p.get("prior", "exemplar"), *builtin_images(size), int(p.get("patch", 8)))
    prior.members(job.prompt)  # unknown label: fail with the list of labels
    z = seed_noise((1, 3, size, size), job.seed)
    reference = run_ddim(prior, job.prompt, cfg, steps, z)
    if job.method == "ddim":
        result = reference
    else:
        result = run_rule(prior, method_2d(job.method, cfg), job.prompt, steps, z, job.seed)
    return {
        **measure(prior, job.prompt, result.image, reference.image),
        **({"eq8_residual": result.metrics["eq8_residual"]} if "eq8_residual" in result.metrics else {}),
        "time_s": result.metrics["wall_time_s"],
        "denoiser_calls": float(result.metrics["denoiser_calls"]),
        "diverged": float(not torch.isfinite(result.image).all()),
    }


# ------------------------------------------------------------------------------------------------- 3d

OBJECTS_3D = (
    "a red cube with white stripes",
    "a blue sphere with yellow dots",
    "a green cylinder with black checker",
    "an orange torus",
)
"""Default catalog objects of the 3D suites (validated by ``parse_prompt`` when the grid is built)."""

METHODS_3D = {"sdi": "fast", "sds": "sds", "ism": "ism", "nfsd": "nfsd", "csd": "csd"}
"""Method -> registered preset of the 3D suite (all CPU-sized, forward CFG 7.5)."""

STEPS_3D = 60
"""Default training steps of the CPU suites: the ``fast`` preset's 300 would not fit the 30-minute budget of
``3d`` + ``ablations`` on 2 shared cores (t still anneals over the whole range: the schedule follows the run)."""


def check_names(kind: str, names, known) -> None:
    """Fail before any job starts on a misspelt method (a typo should not cost a grid of failed jobs)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")


def check_objects(objects) -> None:
    from sdi.scene.catalog import parse_prompt

    for o in objects:
        parse_prompt(o)  # raises with the catalog's vocabulary


def grid_3d(runs_dir: Path, objects=OBJECTS_3D[:3], seeds: int = 2, steps: int = STEPS_3D, methods=tuple(METHODS_3D),
            resolution: int | None = None) -> list[Job]:
    """One job per method x object x seed; ``resolution`` overrides the presets' render size."""
    check_names("3D method", methods, tuple(METHODS_3D))
    return catalog_jobs("3d", runs_dir, objects, seeds, steps, resolution, methods)


def catalog_jobs(suite: str, runs_dir: Path, objects, seeds: int, steps: int, resolution: int | None,
                 methods) -> list[Job]:
    """One ``suite`` job per method x catalog object x seed, training ``steps`` steps into ``runs_dir``."""
    check_objects(objects)
    params = {"steps": steps, "runs_dir": str(Path(runs_dir).resolve())}
    if resolution is not None:
        params["resolution"] = resolution
    return [Job(suite, m, o, s, params) for o in objects for s in range(seeds) for m in methods]


def train_and_score(job: Job, preset: str, **overrides) -> dict:
    """``train_run`` the registered ``preset`` (with RunConfig ``overrides``) into ``runs_dir/<key>`` on the embedded
    prior, then ``evaluate_run`` against the ground truth; a NaN loss is a diverged run, not a failed job."""
    from sdi.bench.evaluate import evaluate_run
    from sdi.train.loop import TrainingDiverged
    from sdi.train.run import RunConfig, train_run

    p = job.params_dict
    resolution = int(p["resolution"]) if "resolution" in p else None
    config = RunConfig(job.prompt, preset, "embedded", int(p["steps"]), job.seed, resolution, **overrides)
    try:
        trained = train_run(run_dir_of(job), config, progress=False, overwrite=True)  # a re-run replaces it
    except TrainingDiverged:  # NaN loss: a diverged run (Table 1's column), not a failed job
        return {"diverged": 1.0, "peak_memory_mb": peak_memory_mb()}
    quality = evaluate_run(run_dir_of(job))
    return {**quality, "train_s": trained["wall_time_s"], "denoiser_calls": float(trained["denoiser_calls"]),
            "peak_memory_mb": peak_memory_mb()}


def job_3d(job: Job) -> dict:
    """``train_run`` the method's preset into ``runs_dir/<key>``, then ``evaluate_run`` against the ground truth."""
    return train_and_score(job, METHODS_3D[job.method])


# ------------------------------------------------------------------------------------------------ views

VIEW_VARIANTS = {"k1": (1, False), "k2-uniform": (2, False), "k2-antithetic": (2, True)}
"""K-view steps (``benchmarks/bench_views.py``): method -> (views per step, antithetic)."""


def grid_views(runs_dir: Path, objects, seeds: int = 2, steps: int = 300, resolution: int | None = None,
               variants=tuple(VIEW_VARIANTS)) -> list[Job]:
    """One job per K-view variant x object x seed; every job gets the same one-view step budget ``steps``."""
    check_names("views variant", variants, tuple(VIEW_VARIANTS))
    return catalog_jobs("views", runs_dir, objects, seeds, steps, resolution, variants)


def job_views(job: Job) -> dict:
    """The fast preset with the job's views per step (``steps // K`` steps, gradients averaged), scored as ``job_3d``;
    ``denoiser_images`` = batched calls x K, equal across variants."""
    views, antithetic = VIEW_VARIANTS[job.method]
    out = train_and_score(job, "fast", views_per_step=views, antithetic=antithetic)
    return {**out, "denoiser_images": out["denoiser_calls"] * views} if "denoiser_calls" in out else out


# ------------------------------------------------------------------------------------------- ablations

T_VALUES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.98)
"""Timesteps (fractions of T) of the Eq. 8 curves."""

ESTIMATORS = ("random-resampled", "random-fixed", "fixed-point", "sgd", "ddim-inversion")
"""The kappa choices of Sec. 6.2 / Figure 9."""

CFG_PAIRS = ((-7.5, 7.5), (0.0, 0.0), (0.0, 7.5), (7.5, 7.5))
"""(inversion CFG, forward CFG) pairs of Figure 10; the paper's choice first."""

ABLATION_RESOLUTION = 32
"""Render and prior size of the 3D ablation runs: 32 (the ``fast`` preset's 64 costs ~4x, too much for 11
variants in the CPU budget); they are compared with each other, still evaluated at 64 against ground truth."""

INVERSION_STEPS = (3, 5, 10, 20, 30)
"""Fixed numbers of inversion steps of Figure 11."""


def estimator(name: str, inversion_cfg: float = -7.5, inversion_steps: int | None = None):
    """A kappa estimator of ``sdi.distill.noise`` by its Sec. 6.2 name."""
    from sdi.distill import noise

    if name == "ddim-inversion":
        if inversion_steps is None:
            return noise.Inversion(cfg=inversion_cfg)
        return noise.Inversion(cfg=inversion_cfg, steps=inversion_steps)
    table = {"random-resampled": noise.RandomResampled(), "random-fixed": noise.RandomFixed(),
             "fixed-point": noise.FixedPoint(10), "sgd": noise.GradientDescent(10)}
    if name not in table:
        raise ValueError(f"unknown kappa estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    return table[name]


def eq8_key(t: float) -> str:
    return f"eq8_t{t:.2f}"


def job_eq8(job: Job) -> dict:
    """Eq. 8 residual (rescaled to x0, ``eq8_residual``) of one kappa estimator at every t, on ground-truth
    renders of the job's catalog object (as x0 in [-1, 1]) at held-out cameras, under the embedded (catalog) prior."""
    import torch

    from sdi.distill.noise import NoiseQuery, eq8_residual
    from sdi.distill.timesteps import to_level
    from sdi.priors.catalog import build_catalog_prior
    from sdi.scene.cameras import held_out_cameras
    from sdi.scene.catalog import parse_prompt
    from sdi.scene.ground_truth import render_ground_truth

    p = job.params_dict
    size, inv_cfg, fwd_cfg = int(p["size"]), float(p["inv_cfg"]), float(p["fwd_cfg"])
    cameras = held_out_cameras(int(p["views"]), size)
    x0 = render_ground_truth(parse_prompt(job.prompt), cameras, supersample=2).rgb * 2 - 1
    prior = build_catalog_prior(job.prompt)
    kappa_of = estimator(p["estimator"], inv_cfg)
    generator, state, out = torch.Generator().manual_seed(job.seed), {}, {}
    start = time.perf_counter()
    for t in p["t_values"]:
        level = to_level(t, len(prior.alphas_cumprod))
        query = NoiseQuery(prior, x0, level, level, parse_prompt(job.prompt).prompt, fwd_cfg, cameras,
                           generator, state)
        out[eq8_key(t)] = eq8_residual(query, kappa_of(query).kappa).mean().item()
    out["time_s"] = time.perf_counter() - start
    return out


def ablation_rules() -> dict[str, tuple[str, Callable]]:
    """3D ablation variants: name -> (ablation, rule factory). "sdi" (paper: -7.5/7.5, int(10 t) inversion
    steps, annealed t) is the shared baseline of the CFG, annealing and preset ablations."""
    from sdi.distill.noise import Inversion, WithEntropy
    from sdi.distill.rule import Rule
    from sdi.distill.sdi import sdi_paper, sdi_reference
    from sdi.distill.timesteps import AnnealedT, RandomT

    rules: dict[str, tuple[str, Callable]] = {"sdi": ("baseline", lambda: sdi_paper())}
    for inv, fwd in CFG_PAIRS[1:]:
        rules[f"cfg {inv:g}/{fwd:g}"] = ("cfg", lambda inv=inv, fwd=fwd: sdi_paper(cfg=fwd, inversion_cfg=inv))
    for n in INVERSION_STEPS:
        noise = WithEntropy(Inversion(cfg=-7.5, steps=n), 0.3)
        rules[f"inv-steps {n}"] = ("inversion_steps",
                                   lambda noise=noise: Rule("sdi", AnnealedT(0.98, 0.2, 1 / 30), noise, 7.5))
    rules["random-t"] = ("annealing", lambda: replace(sdi_paper(), timesteps=RandomT(0.2, 0.98)))
    rules["sdi-reference"] = ("preset", lambda: sdi_reference())
    return rules


def grid_ablations(
    runs_dir: Path, objects=OBJECTS_3D[:1], seeds: int = 2, steps: int = STEPS_3D, eq8_objects=OBJECTS_3D[:2],
    t_values=T_VALUES, views: int = 4, size: int = 64, variants: tuple[str, ...] | None = None,
    resolution: int = ABLATION_RESOLUTION,
) -> list[Job]:
    """3D runs of every ablation variant (``resolution``: their render and prior size), then the Eq. 8 jobs
    (estimators, CFG pairs) per object."""
    check_objects([*objects, *eq8_objects])
    eq8 = {"size": size, "views": views, "t_values": list(t_values)}
    eq8_jobs = [Job("eq8", e, o, 0, {**eq8, "estimator": e, "inv_cfg": -7.5, "fwd_cfg": 7.5})
                for o in eq8_objects for e in ESTIMATORS]
    eq8_jobs += [Job("eq8-cfg", f"{inv:g}/{fwd:g}", o, 0,
                     {**eq8, "estimator": "ddim-inversion", "inv_cfg": inv, "fwd_cfg": fwd})
                 for o in eq8_objects for inv, fwd in CFG_PAIRS]
    names = list(ablation_rules()) if variants is None else list(variants)
    check_names("ablation variant", names, tuple(ablation_rules()))
    params = {"steps": steps, "runs_dir": str(Path(runs_dir).resolve()), "resolution": resolution}
    # Most expensive first, so the two workers finish together.
    names.sort(key=lambda n: -int(n.split()[1]) if n.startswith("inv-steps") else 0)
    runs = [Job("ablation", n, o, s, params) for n in names for o in objects for s in range(seeds)]
    return runs + eq8_jobs  # the cheap Eq. 8 jobs last, to fill the workers' gaps


def job_ablation(job: Job) -> dict:
    """Dispatch: Eq. 8 measurements or a 3D run of an ablation variant."""
    return job_eq8(job) if job.suite.startswith("eq8") else job_3d_rule(job)


def job_3d_rule(job: Job) -> dict:
    """Train the ``fast`` preset with an ablation variant's rule; quality against the ground truth."""
    from sdi.bench.evaluate import evaluate_scene
    from sdi.train.run import RunConfig

    ablation, rule = ablation_rules()[job.method]
    p = job.params_dict
    config = RunConfig(job.prompt, "fast", "embedded", int(p["steps"]), job.seed, int(p.get("resolution", 64)))
    preset = replace(config.resolved_preset(), rule=rule)
    fitted = fit(run_dir_of(job), config, preset)
    if fitted is None:  # NaN loss: a diverged run, not a failed job
        return {"diverged": 1.0, "ablation": ablation, "peak_memory_mb": peak_memory_mb()}
    scene, trained = fitted
    quality = evaluate_scene(scene, job.prompt)
    return {**quality, **trained, "ablation": ablation, "peak_memory_mb": peak_memory_mb()}


# ------------------------------------------------------------------------------------------------- sd

SD_PROMPTS = (
    "A car made out of sushi",
    "A delicious croissant",
    "A small saguaro cactus planted in a clay pot",
    "A plate piled high with chocolate chip cookies",
    "A 3D model of an adorable cottage with a thatched roof",
    "A marble bust of a mouse",
    "A ripe strawberry",
    "A rabbit, animated movie character, high detail 3d mode",
    "A stack of pancakes covered in maple syrup",
    "An ice cream sundae",
    "A baby bunny sitting on top of a stack of pancakes",
    "Baby dragon hatching out of a stone egg",
    "An iguana holding a balloon",
    "A blue tulip",
    "A cauldron full of gold coins",
    "Bagel filled with cream cheese and lox",
    "A plush dragon toy",
    "A ceramic lion",
    "Tower Bridge made out of gingerbread and candy",
    "A pomeranian dog",
    "A DSLR photo of Cthulhu",
    "Pumpkin head zombie, skinny, highly detailed, photorealistic",
    "A shell",
    "An astronaut is riding a horse",
    "Robotic bee, high detail",
    "A sea turtle",
    "A tarantula, highly detailed",
    "A DSLR photograph of a hamburger",
    "A DSLR photo of a soccer ball",
    "A DSLR photo of a white fluffy cat",
    "A DSLR photo of a an old man",
    "Renaissance-style oil painting of a queen",
    "DSLR photograph of a baby racoon holding a hamburger, 80mm",
    "Photograph of a black leather backpack",
    "A DSLR photo of a freshly baked round loaf of sourdough bread",
    "A DSLR photo of a decorated cupcake with sparkling sugar on top",
    "A DSLR photo of a dew-covered peach sitting in soft morning light",
    "A photograph of a policeman",
    "A photograph of a ninja",
    "A photograph of a knight",
    "An astronaut",
    "A photograph of a firefighter",
    "A Viking panda with an axe",
)
"""The paper's 43 evaluation prompts (App. A.4), verbatim (typos included)."""


def sd_presets() -> dict:
    """Method -> GPU preset of the ``sd`` suite: SDI with the paper's numbers; SDS (CFG 100, DreamFusion)
    with everything else equal."""
    from sdi.distill.sds import sds
    from sdi.train.presets import SDI_PAPER

    return {"sdi": SDI_PAPER, "sds": replace(SDI_PAPER, name="sds", rule=lambda: sds(cfg=100.0))}


SD_OVERRIDES = ("steps", "resolution", "num_samples", "batch", "dense_grid")
"""Preset fields an ``sd`` job may override through its params (tests: tiny sizes); ``dense_grid`` swaps
the hash grid for the CPU preset's dense grid (a CPU smoke run)."""


def grid_sd(runs_dir: Path, sd: str, clip: str, prompts=SD_PROMPTS, seeds: int = 1, methods=("sdi", "sds"),
            views: int = 50, eval_size: int = 256, **overrides) -> list[Job]:
    """One job per method x prompt x seed on Stable Diffusion at ``sd`` (a local diffusers folder)."""
    check_names("sd method", methods, ("sdi", "sds"))
    unknown = set(overrides) - set(SD_OVERRIDES)
    if unknown:
        raise ValueError(f"unknown sd overrides {sorted(unknown)}; allowed: {', '.join(SD_OVERRIDES)}")
    for path, what in ((sd, "--sd"), (clip, "--clip")):
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"{what} {path!r} is not a folder; the sd suite needs local Stable Diffusion "
                                    "and CLIP folders (nothing is downloaded)")
    params = {"sd": str(Path(sd).resolve()), "clip": str(Path(clip).resolve()), "views": views,
              "eval_size": eval_size, "runs_dir": str(Path(runs_dir).resolve()),
              **{k: v for k, v in overrides.items() if v is not None}}
    return [Job("sd", m, p, s, params) for p in prompts for s in range(seeds) for m in methods]


def job_sd(job: Job) -> dict:
    """Train the method's preset on Stable Diffusion, render ``views`` turntable views, score them with
    CLIP score (vs the prompt) and CLIP-IQA (quality, sharpness, real; x100 as in Table 1)."""
    import torch

    from sdi.bench.clip_score import clip_iqa, clip_score, load_clip
    from sdi.export.run_outputs import render_views
    from sdi.scene.cameras import turntable_cameras
    from sdi.train.run import RunConfig

    p = job.params_dict
    preset = sd_presets()[job.method]
    preset = replace(preset, **{k: int(p[k]) for k in SD_OVERRIDES if k in p and k != "dense_grid"})
    if p.get("dense_grid"):
        from sdi.train.presets import FAST

        preset = replace(preset, radiance_field=FAST.radiance_field)
    config = RunConfig(job.prompt, "sdi-paper", f"sd:{p['sd']}", preset.steps, job.seed)
    fitted = fit(run_dir_of(job), config, preset)
    if fitted is None:  # NaN loss: a diverged run, not a failed job
        return {"diverged": 1.0, "peak_memory_mb": peak_memory_mb()}
    scene, trained = fitted
    scene.field.eval()
    with torch.no_grad():
        out = render_views(scene, turntable_cameras(int(p["views"]), size=int(p["eval_size"])))
    rgb = torch.nan_to_num(out.rgb.float(), nan=1.0).clamp(0, 1).cpu()
    diverged = out.opacity.float().nan_to_num(0).mean().item() < 0.01
    clip = load_clip(p["clip"], "cuda" if torch.cuda.is_available() else "cpu")
    scores = {"clip_score": clip_score(clip, rgb, job.prompt).mean().item()}
    scores.update({f"iqa_{k}": 100 * v.mean().item() for k, v in clip_iqa(clip, rgb).items()})
    return {**scores, **trained, "diverged": float(diverged), "peak_memory_mb": peak_memory_mb()}


# ---------------------------------------------------------------------------------------------- reports

METRICS = {
    "2d": ("distance_to_ddim", "detail_vs_ddim", "distance_to_prior", "eq8_residual", "time_s", "denoiser_calls"),
    "3d": ("psnr", "ssim", "mask_iou", "detail_ratio", "masked_detail_ratio", "saturation_error", "train_s",
           "denoiser_calls", "peak_memory_mb"),
    "sd": ("clip_score", "iqa_quality", "iqa_sharpness", "iqa_real", "train_s", "denoiser_calls", "peak_memory_mb"),
    "views": ("psnr", "ssim", "mask_iou", "detail_ratio", "masked_detail_ratio", "saturation_error", "denoiser_images",
              "denoiser_calls", "train_s"),
}
TITLES = {"2d": "2D: score distillation vs the DDIM sample (closed-form prior over the built-in set)",
          "3d": "3D: score distillation on catalog objects vs ground truth (embedded prior, CPU)",
          "ablations": "Ablations (Sec. 6.2) on the catalog (embedded prior, CPU)",
          "sd": "Stable Diffusion: the paper's prompts, CLIP score and CLIP-IQA (Table 1)",
          "views": "K views per step at an equal denoiser budget (embedded prior, CPU)"}


def _mean(rows, group: str, metric: str) -> dict[str, float]:
    """Mean of ``metric`` per value of ``group`` over ok rows (NaN when none is finite)."""
    from sdi.bench.report import summarize

    return {s[group]: s[metric][0] for s in summarize(rows, (group,), [metric])} if rows else {}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _compare(means: dict[str, float], a: str, b: str, metric: str, higher: str) -> str:
    """One sentence comparing two groups' means, as measured."""
    if a not in means or b not in means:
        return ""
    verdict = "higher" if means[a] > means[b] else "lower" if means[a] < means[b] else "equal"
    return f"- {metric}: {a} {_fmt(means[a])} vs {b} {_fmt(means[b])} ({a} is {verdict}; {higher})."


def write_suite_report(suite: str, rows, out: Path, command: str, elapsed: float, workers: int) -> Path:
    """report.md (+ PNG plots) for one suite, with the wall time and the measured comparisons."""
    from sdi.bench.report import write_report

    out = Path(out)
    timing = [f"Wall time of the whole grid: {elapsed:.0f} s ({elapsed / 60:.1f} min) with {workers} workers.", ""]
    if suite == "ablations":
        return _ablation_report(rows, out, command, timing)
    path = write_report(rows, out, TITLES[suite], ("method",), METRICS[suite], command)
    notes = ["## Findings (as measured)", ""]
    ok = [r for r in rows if r.get("status") == "ok"]
    if suite == "3d":
        for metric, text in (("detail_ratio", "closer to 1 = as detailed as the ground truth"),
                             ("masked_detail_ratio", "inside the ground-truth mask eroded by 3 px, so floaters "
                                                     "and speckle do not count; closer to 1 = as detailed"),
                             ("psnr", "higher is better"), ("saturation_error", "lower is better")):
            means = _mean(ok, "method", metric)
            notes += [line for line in (_compare(means, "sdi", m, metric, text) for m in ("sds", "ism", "nfsd", "csd"))
                      if line]
        notes += ["", "NFSD runs on the embedded prior with negative prompt \"\" (the prior knows only catalog "
                  "labels), so its domain term is 0 for t >= 200.", ""]
        if len({r["prompt"] for r in ok}) > 1:
            path_obj = write_report(ok, out / "per-object", "3D per object", ("prompt", "method"), METRICS[suite][:6],
                                    command)
            notes += [f"Per-object table: [{path_obj.relative_to(out)}]({path_obj.relative_to(out)})", ""]
    if suite == "2d":
        for metric, text in (("distance_to_ddim", "Distance to the DDIM sample of the same seed, closest first"),
                             ("distance_to_prior", "Distance to the prior's nearest sample (0 = a sharp sample of "
                                                   "the prior), closest first"),
                             ("detail_vs_ddim", "Detail relative to the DDIM sample (1 = as sharp), lowest first")):
            means = _mean(ok, "method", metric)
            ranked = sorted((v, k) for k, v in means.items() if k != "ddim")
            notes += [f"{text}: " + ", ".join(f"{k} {_fmt(v)}" for v, k in ranked), ""] if ranked else []
    text = path.read_text().rstrip() + "\n\n" + "\n".join(timing + notes) + "\n"
    path.write_text(text)
    return path


def _eq8_rows(rows) -> list[dict]:
    """Eq. 8 jobs exploded to one row per (job, t) with columns method, t, eq8_error."""
    out = []
    for r in rows:
        if r.get("status") != "ok" or not str(r.get("suite", "")).startswith("eq8"):
            continue
        for k, v in r.items():
            if k.startswith("eq8_t"):
                out.append({"suite": r["suite"], "method": r["method"], "prompt": r["prompt"], "t": float(k[5:]),
                            "eq8_error": v, "status": "ok"})
    return out


def _eq8_table(rows, suite: str) -> tuple[list[str], dict[str, float]]:
    """Markdown table mean Eq. 8 error per method (rows) and t (columns); and the mean over t per method."""
    from sdi.bench.report import mean_std

    sel = [r for r in rows if r["suite"] == suite]
    ts = sorted({r["t"] for r in sel})
    methods = list(dict.fromkeys(r["method"] for r in sel))
    lines = ["| method | " + " | ".join(f"t={t:g}" for t in ts) + " | mean |", "|---|" + "---|" * (len(ts) + 1)]
    overall = {}
    for m in methods:
        cells = [mean_std(r["eq8_error"] for r in sel if r["method"] == m and r["t"] == t)[0] for t in ts]
        overall[m] = mean_std(r["eq8_error"] for r in sel if r["method"] == m)[0]
        lines.append(f"| {m} | " + " | ".join(_fmt(c) for c in cells) + f" | {_fmt(overall[m])} |")
    return lines, overall


def _best_per_t(rows) -> list[tuple[float, str]]:
    """(t, method with the lowest mean Eq. 8 error at t) for every t."""
    from sdi.bench.report import mean_std

    out = []
    for t in sorted({r["t"] for r in rows}):
        means = {m: mean_std(r["eq8_error"] for r in rows if r["t"] == t and r["method"] == m)[0]
                 for m in dict.fromkeys(r["method"] for r in rows)}
        out.append((t, min(means, key=means.get)))
    return out


def _steps_first(name: str) -> tuple[int, str]:
    """Sort key: "inv-steps 3" before "inv-steps 10"; other names in their own order."""
    return (int(name.split()[1]), name) if name.startswith("inv-steps ") else (0, "")


def _ablation_report(rows, out: Path, command: str, timing: list[str]) -> Path:
    """Top-level report.md: Eq. 8 tables and curves, then one sub-report per 3D ablation."""
    from sdi.bench.report import line_plot, write_report
    from sdi.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {TITLES['ablations']}", "", "Produced by:", "", "```", command, "```", "", *timing]
    failed = [r for r in rows if r.get("status") != "ok"]
    lines += [f"{len(rows)} jobs, {len(failed)} failed.", ""]
    eq8 = _eq8_rows(rows)
    for suite, title, png in (("eq8", "Eq. 8 error per t for each kappa estimator (Figure 9)", "eq8_estimators.png"),
                              ("eq8-cfg", "Eq. 8 error per t for each inversion/forward CFG pair (Figure 10)",
                               "eq8_cfg_pairs.png")):
        sel = [r for r in eq8 if r["suite"] == suite]
        if not sel:
            continue
        table, overall = _eq8_table(eq8, suite)
        line_plot(sel, "t", "eq8_error", "method", out / png, title="Eq. 8 residual (x0 units) vs t")
        best = min(overall, key=overall.get)
        lines += [f"## {title}", "", "sigma_t |kappa - eps_theta(x_t(kappa))| (RMS, x0 units) on ground-truth renders "
                  "at held-out cameras, mean over objects and views.", "", *table, "", f"![{suite}]({png})", "",
                  f"Lowest mean error over t: **{best}** ({_fmt(overall[best])}). Lowest at each t: "
                  + ", ".join(f"t={t:g} {m}" for t, m in _best_per_t(sel)) + ".", ""]
    runs = [r for r in rows if r.get("suite") == "ablation"]
    groups = {
        "cfg": ("Inversion / forward CFG pairs, 3D (Figure 10); sdi = -7.5/7.5", ("sdi", "cfg ")),
        "inversion_steps": ("Number of inversion steps, 3D (Figure 11)", ("inv-steps ",)),
        "annealing": ("t annealing: SDI (annealed t) vs random t", ("sdi", "random-t")),
        "preset": ("Paper vs reference numbers (sdi = sdi_paper)", ("sdi", "sdi-reference")),
    }
    for name, (title, prefixes) in groups.items():
        sel = [r for r in runs if r["method"] == "sdi" and "sdi" in prefixes
               or any(r["method"].startswith(p) for p in prefixes if p != "sdi")]
        if not sel:
            continue
        sub = write_report(sel, out / name, title, ("method",), METRICS["3d"], command)
        ok = [r for r in sel if r.get("status") == "ok"]
        psnr, detail, secs = (_mean(ok, "method", m) for m in ("psnr", "detail_ratio", "train_s"))
        lines += [f"## {title}", "", f"Full table: [{name}/report.md]({name}/report.md)", "",
                  "| method | PSNR | detail ratio | train s |"]
        calls = _mean(ok, "method", "denoiser_calls")
        lines[-1:] = ["| method | PSNR | detail ratio | train s | denoiser calls |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {_fmt(psnr[m])} | {_fmt(detail.get(m, math.nan))} | {_fmt(secs.get(m, math.nan))} | "
                  f"{_fmt(calls.get(m, math.nan))} |" for m in sorted(psnr, key=_steps_first)]
        if name == "inversion_steps" and ok:
            for r in ok:
                r["inv_steps"] = float(r["method"].split()[1])
            for metric in ("psnr", "detail_ratio", "train_s"):
                line_plot(ok, "inv_steps", metric, "suite", out / name / f"{metric}_vs_steps.png")
                lines += ["", f"![{metric}]({name}/{metric}_vs_steps.png)"]
        if psnr:
            best = max(psnr, key=psnr.get)
            lines += ["", f"Highest PSNR: **{best}** ({_fmt(psnr[best])}).", ""]
        del sub
    if failed:
        lines += ["## Failed jobs", "", "| key | error |", "|---|---|"]
        lines += [f"| {r['key']} | {str(r.get('error', '')).replace('|', '/')[:300]} |" for r in failed]
    return Path(atomic_write_text(out / "report.md", "\n".join(lines) + "\n"))
