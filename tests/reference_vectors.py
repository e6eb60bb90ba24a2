"""Golden vectors of the authors' code (../shared/reference): loading, and running one case through our rules.

The vector file is ``$SDI_REFERENCE_VECTORS`` when set, else the first ``shared/reference/sdi-threestudio.safetensors``
found walking up from this repository; its manifest is the JSON beside it with the same stem, the model the
``tiny-sd`` folder beside it (checked against the manifest's sha256 sums). Every problem with them is a
``VectorsError`` with a one-line message.

``run_case`` replays one case: the recorded draws through ``ReplayNoise`` in their recorded order, t and delta
fixed through ``Levels``, every UNet call recorded by a forward hook, every inversion step by the DDIM
callback. It returns, per stage, our tensor and the authors'.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from sdi.diffusion.denoiser import PromptMix, encode
from sdi.diffusion.noise_sampler import ReplayNoise
from sdi.diffusion.parametrization import add_noise
from sdi.diffusion.perp_neg import perp_neg_branches, perp_neg_combine, perp_neg_weights
from sdi.diffusion.schedules import leading_inversion_levels, source_grid
from sdi.diffusion.views import DIRECTIONS, camera_angles, view_prompt
from sdi.distill.rule import Rule, distill_update, weight
from sdi.distill.sdi import sdi_reference
from sdi.distill.sds import sds_threestudio
from sdi.distill.timesteps import Levels
from sdi.scene.cameras import orbit_cameras

ENV = "SDI_REFERENCE_VECTORS"
DEFAULT_NAME = Path("shared/reference/sdi-threestudio.safetensors")


class VectorsError(RuntimeError):
    """The vector file, its manifest or its model is missing or malformed; the message is one line."""


def default_path() -> Path:
    """$SDI_REFERENCE_VECTORS, else shared/reference/sdi-threestudio.safetensors above this repository."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    for folder in Path(__file__).resolve().parents:
        if (folder / DEFAULT_NAME).exists():
            return folder / DEFAULT_NAME
    return Path(__file__).resolve().parents[2] / DEFAULT_NAME


@dataclass
class Vectors:
    path: Path
    manifest: dict
    tensors: dict[str, Tensor]
    model: Path

    @property
    def cases(self) -> list[dict]:
        return self.manifest["cases"]


def _fail(path: Path, what: str) -> VectorsError:
    return VectorsError(f"{ENV}={path}: {what} (point {ENV} at a .safetensors with its .json manifest beside it)")


CASE_KEYS = ("id", "kind", "settings", "tensors", "suggested_tolerance")


def load_manifest(path: Path) -> dict:
    """The JSON manifest beside ``path``, checked for the keys the golden test reads."""
    if not path.is_file():
        raise _fail(path, "no such vector file")
    manifest_path = path.with_suffix(".json")
    if not manifest_path.is_file():
        raise _fail(path, f"no manifest {manifest_path.name} beside it")
    try:
        manifest = json.loads(manifest_path.read_text())
        cases = manifest["cases"]
        missing = [key for case in cases for key in CASE_KEYS if key not in case]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise _fail(path, f"malformed manifest {manifest_path.name} ({type(err).__name__}: {err})") from None
    if missing or not cases or any(c["kind"] not in ("sdi", "sds") for c in cases):
        raise _fail(path, f"malformed manifest {manifest_path.name} (cases need {', '.join(CASE_KEYS)}; "
                          "kinds sdi or sds)")
    return manifest


def load_vectors(path: Path | None = None) -> Vectors:
    """Manifest, tensors and model folder; a one-line ``VectorsError`` if anything is missing or malformed."""
    from safetensors.torch import load_file

    path = default_path() if path is None else path
    manifest = load_manifest(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any damage of the tensor file is the same one-line error
        raise _fail(path, f"unreadable tensor file ({type(err).__name__})") from None
    for case in manifest["cases"]:
        for name, spec in case["tensors"].items():
            if name not in tensors or list(tensors[name].shape) != spec["shape"]:
                raise _fail(path, f"tensor {name} missing or not of shape {spec['shape']}")
    model = path.parent / "tiny-sd"
    for rel, digest in manifest.get("model", {}).get("files_sha256", {}).items():
        file = model / rel
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise _fail(path, f"the model beside it does not match the manifest ({file})")
    return Vectors(path, manifest, tensors, model)


# -- running a case ------------------------------------------------------------------------------
class UNetRecorder:
    """Records (sample, timestep, encoder_hidden_states, output) of every UNet forward while active."""

    def __init__(self, unet):
        self.calls: list[dict] = []
        self.handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        sample, timestep = args[0], args[1]
        emb = kwargs["encoder_hidden_states"]
        self.calls.append(dict(sample=sample.detach().clone(), timestep=timestep.detach().clone(),
                               emb=emb.detach().clone(), out=output.sample.detach().clone()))

    def close(self):
        self.handle.remove()


def fill_embeddings(prior, vectors: Vectors, case: dict) -> str:
    """Put the authors' stored text embeddings of the case's prompt in the prior's cache; returns the prompt."""
    info = vectors.manifest["prompts"][case["prompt"]["index"]]
    p = f"prompt_{info['index']}_"
    vd = vectors.tensors[p + "text_embeddings_vd"]
    for row, name in enumerate(info["direction_order"]):
        text = info["view_prompts"][name]
        assert text == view_prompt(info["prompt"], name), (text, view_prompt(info["prompt"], name))
        prior.text_embeddings[text] = vd[row : row + 1]
    assert tuple(info["direction_order"]) == DIRECTIONS
    prior.text_embeddings[info["negative_prompt"]] = vectors.tensors[p + "uncond_text_embeddings"]
    return info["prompt"]


def case_cameras(case: dict, tensors: dict[str, Tensor]):
    k = case["id"]
    distance = case["settings"].get("camera_distance", 2.0)
    return orbit_cameras(tensors[f"{k}_elevation_deg"], tensors[f"{k}_azimuth_deg"], distance, 40.0, 64)


def case_rule(case: dict) -> Rule:
    s = case["settings"]
    if case["kind"] == "sds":
        assert s["weighting_strategy"] == "sds" and s.get("grad_clip") is None, s
        return sds_threestudio(cfg=s["guidance_scale"], perp_neg=s["use_perp_neg"])
    assert s["inversion_n_steps"] == 10 and s["view_dependent_prompting"], s
    return sdi_reference(s["guidance_scale"], s["inversion_guidance_scale"], s["inversion_eta"], s["use_perp_neg"])


def _input_latents(prior, case: dict, tensors: dict[str, Tensor], noise: ReplayNoise):
    """(differentiable x0, leaf to read d loss / d rgb from or None, extra stages): the RGB cases encode the
    render as the authors do (resize the (B, H, W, 3) render in [0, 1] to 512, 2 x - 1, posterior.sample())."""
    k = case["id"]
    if case["settings"].get("input") != "rgb":
        return tensors[f"{k}_x0"].clone().requires_grad_(), None, {}
    rgb = tensors[f"{k}_rgb"].clone().requires_grad_()
    image = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), (512, 512), mode="bilinear", align_corners=False)
    sampled = replace_options(prior, encode_mode="sample")
    with torch.no_grad():
        posterior = sampled.vae.encode(image * 2.0 - 1.0).latent_dist
    x0 = encode(sampled, image * 2.0 - 1.0, noise)
    x0.retain_grad()
    return x0, rgb, {"x0": x0.detach(), "vae_posterior_mean": posterior.mean, "vae_posterior_std": posterior.std}


def replace_options(prior, **options):
    """The same modules and text cache, other options."""
    from sdi.priors.stable_diffusion import StableDiffusionPrior

    other = StableDiffusionPrior(prior.unet, prior.vae, prior.text_encoder, prior.tokenizer, prior.alphas_cumprod,
                                 prior.prediction_type, replace(prior.options, **options))
    other.text_embeddings = prior.text_embeddings
    return other


def recorded_draws(case: dict, tensors: dict[str, Tensor]) -> list[Tensor]:
    """The case's N(0, I) draws in the order the authors' code consumed them ("name[i]": row i of name)."""
    out = []
    for d in sorted((d for d in case["random_draws"] if d["order"] != "-"), key=lambda d: d["order"]):
        name, _, index = d["tensor"].partition("[")
        out.append(tensors[name][int(index.rstrip("]"))] if index else tensors[name])
    return out


def run_case(prior, vectors: Vectors, case: dict) -> dict[str, tuple[Tensor, Tensor]]:
    """Our value and the authors' of every stored output of ``case``: {stage: (ours, theirs)}."""
    tensors, k = vectors.tensors, case["id"]
    prompt, cameras = fill_embeddings(prior, vectors, case), case_cameras(case, tensors)
    noise = ReplayNoise(recorded_draws(case, tensors))
    x0, rgb, stages = _input_latents(prior, case, tensors, noise)
    runner = _run_sdi if case["kind"] == "sdi" else _run_sds
    recorder = UNetRecorder(prior.unet)
    try:
        update, more = runner(prior, case, tensors, prompt, cameras, x0, noise)
    finally:
        recorder.close()
    assert noise.remaining == 0, f"{noise.remaining} recorded draws were not consumed"
    loss = update.loss(x0)
    loss.backward()
    stages.update(more)
    stages.update(target=update.target, loss=loss.detach(), dloss_dlatents=x0.grad)
    if rgb is not None:
        stages["dloss_drgb"] = rgb.grad
    stages.update(_recorded_stages(case, recorder.calls))
    return {s: (ours, tensors[f"{k}_{s}"]) for s, ours in stages.items() if f"{k}_{s}" in tensors}


def _run_sdi(prior, case, tensors, prompt, cameras, x0, noise):
    k, steps = case["id"], []
    t, t_end = int(tensors[f"{k}_t"]), int(tensors[f"{k}_t_plus_delta"])
    update = distill_update(case_rule(case), prior, x0, Levels(t, t_end), prompt, noise, {}, cameras, steps.append)
    levels = leading_inversion_levels(len(prior.alphas_cumprod), t, t_end)
    grid = source_grid(prior.alphas_cumprod, levels)
    return update, {
        "inv_timesteps": levels,
        "inv_alpha_src": grid.alphas[:-1],
        "inv_alpha_dst": grid.alphas[1:],
        "inv_entropy_std": torch.stack([s.noise_std for s in steps]),
        "inv_eps": torch.stack([s.eps for s in steps]),
        "inv_x_after": torch.stack([s.x_next for s in steps]),
        "x_inverted": steps[-1].x_next,
        "kappa": update.noise.kappa,
        "fwd_eps": update.eps,
        "perp_neg_weights": perp_neg_weights(*camera_angles(cameras))[3],
    }


def _run_sds(prior, case, tensors, prompt, cameras, x0, noise):
    k, rule = case["id"], case_rule(case)
    t = tensors[f"{k}_t"]
    if len(t) > 1 and case["settings"]["use_perp_neg"]:
        update = threestudio_paired_sds(prior, rule, x0, t, prompt, cameras, noise)
    else:
        t_item = int(t) if len(t) == 1 else t  # per item: threestudio draws t for each image
        update = distill_update(rule, prior, x0, Levels(t_item, t_item), prompt, noise, {}, cameras)
    alpha = prior.alphas_cumprod[t].to(x0)
    return update, {"x_t": update.x_t, "eps": update.eps, "w": weight(alpha, rule.weighting), "grad": update.grad,
                    "perp_neg_weights": perp_neg_weights(*camera_angles(cameras))[3]}


def threestudio_paired_sds(prior, rule: Rule, x0: Tensor, t: Tensor, prompt: str, cameras, noise):
    """threestudio's SDS step with its B > 1 Perp-Neg pairing, arranged on the test's side from the library's
    pieces: image 2B + j of its UNet batch holds negative_(j mod 2)(item j // 2) on latent x_(j mod B), so the
    two negative branches are handed to ``predict_eps`` with their rows in that order."""
    from sdi.distill.noise import Noise
    from sdi.distill.rule import Update

    x0 = x0.detach()
    B = len(x0)
    kappa = noise(x0)
    alpha = prior.alphas_cumprod[t].to(x0).view(-1, 1, 1, 1)
    x_t = add_noise(x0, kappa, alpha)
    (pos, uncond, neg0, neg1), weights = perp_neg_branches(prompt, cameras, rule.guidance.negative)
    rows = torch.stack([(neg0, neg1)[j % 2].weights[j // 2] for j in range(2 * B)])
    arranged = [pos, uncond, PromptMix(pos.texts, rows[:B]), PromptMix(pos.texts, rows[B:])]
    with torch.no_grad():
        raw = prior.predict_eps(x_t, t, arranged, cameras)
    negatives = raw[2:].reshape(2 * B, *x0.shape[1:])
    eps = perp_neg_combine(raw[1], raw[0], (negatives[0::2], negatives[1::2]), weights, rule.cfg)
    grad = weight(alpha, rule.weighting) * (eps - kappa)
    return Update(x0, grad, Levels(t, t), x_t, eps, Noise(kappa), float(x0.numel()))


def _recorded_stages(case: dict, calls: list[dict]) -> dict[str, Tensor]:
    """UNet inputs, labels, raw outputs and embeddings as the recorder saw them."""
    out = {"unet_emb": torch.stack([c["emb"] for c in calls])}
    B = case["settings"]["batch_size"]
    if case["kind"] == "sds":
        (call,) = calls
        return {**out, "unet_timestep": call["timestep"].float(), "unet_raw": call["out"]}
    *inversion, forward = calls
    return {**out,
            "inv_unet_timestep": torch.stack([c["timestep"].float() for c in inversion]),
            "fwd_unet_input": forward["sample"][:B], "fwd_unet_timestep": forward["timestep"].float(),
            "fwd_unet_raw": forward["out"]}


def tolerance(case: dict, stage: str, theirs: Tensor) -> float:
    """The manifest's suggested tolerance; for stages it lists none (levels, labels, alphas, stds, embeddings,
    weights) 4 ulp of the largest magnitude: they must match to rounding."""
    suggested = case["suggested_tolerance"].get(f"{case['id']}_{stage}")
    if suggested is not None:
        return float(suggested)
    if not theirs.is_floating_point():
        return 0.0
    return 4 * torch.finfo(torch.float32).eps * float(theirs.abs().max().clamp(min=1.0))
