"""Stable Diffusion (Rombach et al. 2022) as a ``Denoiser``: a latent eps-predictor with a VAE and CLIP text.

Notation (paper -> code): x(t) -> ``x_t`` (B, 4, h, w) latents; eps_theta(x(t), y) -> ``predict_eps``;
the rendered image g(psi) -> ``encode``'s input, (B, 3, H, W) in [-1, 1], h = H / 8 for real weights.

Weights come only from disk: a local diffusers folder (``model_index.json`` + unet/, vae/,
text_encoder/, tokenizer/, scheduler/) or a hub id already in the Hugging Face cache; nothing is
ever downloaded (``local_files_only=True`` everywhere). diffusers and transformers are optional
dependencies (``pip install sdi[sd]``), imported only when weights are loaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sdi.diffusion.denoiser import CameraBatch, Prompt, PromptMix
from sdi.diffusion.noise_sampler import NoiseSampler
from sdi.diffusion.parametrization import eps_from_v
from sdi.diffusion.views import camera_angles, has_view_suffix, view_index, view_prompts

DEFAULT_HUB_ID = "stabilityai/stable-diffusion-2-1-base"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class PriorLoadError(ValueError):
    """Weights that cannot be found or loaded locally; the message says how to provide them."""


@dataclass(frozen=True)
class StableDiffusionOptions:
    """How the prior runs; none of these change its predictions beyond floating-point rounding."""

    view_dependent_prompts: bool = False
    """Append ", front view" / ", side view" / ", back view" / ", overhead view" to every non-empty
    prompt per batch item, from its view direction (DreamFusion); prompts that already name a view
    and the unconditional "" are left alone."""
    resize_to_model: bool = False
    """Resize images (bilinear) to the model's own size, ``image_size`` (512 for SD 2.1-base), before encoding,
    as threestudio does with renders: the render resolution then sets only the render's cost."""
    encode_mode: Literal["mean", "sample"] = "mean"
    """Latent of an image: the VAE posterior mean (deterministic, our default) or a sample from it,
    mean + std n with n the caller's noise draw (threestudio's ``posterior.sample()``; the posterior std
    of SD's VAE is tiny, so they barely differ)."""
    unet_grad: bool = False
    """Build the autograd graph through the UNet. Score distillation never differentiates the UNet
    (DreamFusion drops its Jacobian), so by default it runs under ``no_grad`` to save memory."""
    gradient_checkpointing_vae: bool = False
    """Recompute the VAE's activations in the backward pass (less memory for 512x512 renders)."""
    enable_vae_slicing: bool = False
    """Run the VAE one image at a time for batches (less peak memory)."""
    compile_unet: bool = False
    """``torch.compile`` the UNet; CUDA only (ignored with a warning elsewhere)."""


class StableDiffusionPrior:
    """A diffusers Stable Diffusion (UNet + VAE + CLIP text encoder) behind the ``Denoiser`` protocol.

    ``predict_eps`` runs every prompt branch in ONE batched UNet call (branches concatenated along
    the batch, each item with its own latent), with text embeddings computed once per distinct text and
    cached in ``text_embeddings`` (fill it by hand to run without a text encoder). A ``PromptMix`` branch
    mixes the embeddings of its texts per item before the UNet (Perp-Neg). v-prediction models are
    converted to eps (Salimans & Ho 2022). Outputs come back in the dtype of the input. ``image_size`` is
    the side of the images the model was trained on: UNet sample size x the VAE's downscale.
    """

    free_text = True
    """Any text is a prompt; ``PromptMix`` branches work (a ``Denoiser`` capability)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module | None,
        tokenizer,
        alphas_cumprod: Tensor,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        options: StableDiffusionOptions = StableDiffusionOptions(),
    ):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        for module in (unet, vae, text_encoder):
            if module is not None:
                module.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self._alphas_on_device = self.alphas_cumprod.to(self.device)
        self.prediction_type = prediction_type
        self.options = options
        self.image_size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.text_embeddings: dict[str, Tensor] = {}
        self._apply_memory_options()

    def _apply_memory_options(self) -> None:
        if self.options.gradient_checkpointing_vae:
            self.vae.enable_gradient_checkpointing()
        if self.options.enable_vae_slicing:
            self.vae.enable_slicing()
        if self.options.compile_unet:
            if self.device.type == "cuda":
                self.unet = torch.compile(self.unet)
            else:
                warnings.warn("compile_unet only applies on CUDA; running the UNet uncompiled", stacklevel=3)

    # -- text ---------------------------------------------------------------------------------
    def text_embedding(self, text: str) -> Tensor:
        """(1, 77, D) CLIP last hidden state of ``text``, computed once and cached."""
        if text not in self.text_embeddings:
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(f"no text encoder loaded and no cached embedding for {text!r}; fill text_embeddings")
            n = self.tokenizer.model_max_length
            tokens = self.tokenizer([text], padding="max_length", max_length=n, truncation=True, return_tensors="pt")
            ids = tokens.input_ids.to(self.device)
            with torch.no_grad():
                self.text_embeddings[text] = self.text_encoder(ids)[0].to(self.dtype)
        return self.text_embeddings[text]

    @property
    def sampled_encoding(self) -> bool:
        """Whether ``encode`` draws the latent from the posterior (a ``Denoiser`` capability)."""
        return self.options.encode_mode == "sample"

    def _mix(self, texts: Sequence[str], weights: Tensor) -> Tensor:
        """(B, 77, D): sum_k weights[:, k] E(texts[k]), summed in order (threestudio's r E_a + (1 - r) E_b, bitwise)."""
        w = weights.to(self.device, self.dtype).view(*weights.shape, 1, 1)
        out = w[:, 0] * self.text_embedding(texts[0])
        for k in range(1, len(texts)):
            out = out + w[:, k] * self.text_embedding(texts[k])
        return out

    def branch_embeddings(self, prompt: Prompt, cameras: CameraBatch | None, batch: int) -> Tensor:
        """(B, 77, D) the text embedding each batch item of one branch is conditioned on: a ``PromptMix``'s
        mix, or ``prompt`` plus its view suffix if enabled (threestudio's bins, ``sdi.diffusion.views``)."""
        if isinstance(prompt, PromptMix):
            if len(prompt.weights) != batch:
                raise ValueError(f"a PromptMix of {len(prompt.weights)} rows for a batch of {batch} images")
            return self._mix(prompt.texts, prompt.weights)
        if not self.options.view_dependent_prompts or cameras is None or prompt == "" or has_view_suffix(prompt):
            return self.text_embedding(prompt).expand(batch, -1, -1)
        if len(cameras) != batch:
            raise ValueError(f"{len(cameras)} cameras for a batch of {batch} images")
        views = torch.cat([self.text_embedding(text) for text in view_prompts(prompt)])  # (4, 77, D)
        return views[view_index(*camera_angles(cameras)).to(self.device)]

    # -- Denoiser protocol --------------------------------------------------------------------
    def predict_eps(
        self, x_t: Tensor, t: Tensor, prompts: Sequence[Prompt], cameras: CameraBatch | None = None
    ) -> Tensor:
        """x_t (B, 4, h, w), t (B,) or scalar int -> eps (len(prompts), B, 4, h, w), one UNet call."""
        if len(prompts) == 0:
            raise ValueError("predict_eps needs at least one prompt ('' is the unconditional one)")
        batch, n = x_t.shape[0], len(prompts)
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch).repeat(n)
        context = torch.cat([self.branch_embeddings(p, cameras, batch) for p in prompts])  # (n B, 77, D)
        x_in = x_t.to(self.device, torch.float32).repeat(n, 1, 1, 1)  # branch-major, matches ``context``
        with torch.set_grad_enabled(self.options.unet_grad and torch.is_grad_enabled()):
            out = self.unet(x_in.to(self.dtype), t, encoder_hidden_states=context).sample.float()
            if self.prediction_type == "v_prediction":  # converted in fp32; label -99 sits at a(0)
                out = eps_from_v(x_in, out, self._alphas_on_device[t.clamp(min=0)].view(-1, 1, 1, 1))
        return out.reshape(n, *x_t.shape).to(x_t.dtype)

    def encode(self, image: Tensor, noise: NoiseSampler | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8), differentiable w.r.t. the image.
        With ``encode_mode="sample"`` the latent is mean + std n, n the next draw of ``noise``."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"encode takes (B, 3, H, W) images in [-1, 1], got {tuple(image.shape)}")
        size = (self.image_size, self.image_size)
        if self.options.resize_to_model and image.shape[-2:] != size:
            image = F.interpolate(image, size, mode="bilinear", align_corners=False)
        posterior = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        if self.options.encode_mode == "mean":
            z = posterior.mean
        elif noise is None:
            raise ValueError("encode_mode='sample' needs a noise sampler: encode(image, noise)")
        else:
            z = posterior.mean + posterior.std * noise(posterior.mean)
        return ((z - self.shift_factor) * self.scaling_factor).to(image.dtype)

    def decode(self, latent: Tensor) -> Tensor:
        """Scaled latents -> images (B, 3, H, W) clamped to [-1, 1]."""
        z = latent.to(self.device, self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).to(latent.dtype)


# -- loading ------------------------------------------------------------------------------------
def _how_to_get(spec: str) -> str:
    hub_id = spec if _is_hub_id(spec) else DEFAULT_HUB_ID
    return (
        f"download it once with `hf download {hub_id}` (`huggingface-cli download` on older huggingface_hub) "
        f"on a machine with network and copy the cache, or pass a local diffusers folder with "
        f"{', '.join(s + '/' for s in SUBFOLDERS)}"
    )


def _is_hub_id(spec: str) -> bool:
    """'org/name' or 'name' with hub-legal characters, not a filesystem-looking path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", spec)) and not spec.startswith(".")


def resolve_weights(spec: str, cache_dir: str | Path | None = None) -> Path:
    """A local diffusers folder for ``spec``: a folder path, or a hub id already in the HF cache
    (``cache_dir``, default the standard one: HF_HUB_CACHE / HF_HOME)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        root = path
    elif _is_hub_id(spec) and not path.exists():
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise PriorLoadError(f"{spec!r} is not a folder, and looking it up in the Hugging Face cache needs "
                                 "huggingface_hub: pip install 'sdi[sd]' (or give a local diffusers folder)") from None
        try:
            root = Path(snapshot_download(spec, cache_dir=cache_dir, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any cache miss means "not available offline"
            message = f"{spec!r} is not a folder and not in the Hugging Face cache; {_how_to_get(spec)}"
            raise PriorLoadError(message) from err
    else:
        raise PriorLoadError(f"no Stable Diffusion folder at {spec!r}; {_how_to_get(spec)}")
    missing = [s for s in SUBFOLDERS if not (root / s).is_dir()]
    if missing:
        raise PriorLoadError(f"{str(root)!r} lacks {', '.join(missing)}; {_how_to_get(spec)}")
    check_safetensors(root)
    return root


WEIGHT_FOLDERS = ("unet", "vae", "text_encoder")
"""Subfolders holding weights; each must hold them as safetensors (never pickle: it can run code)."""


def check_safetensors(root: Path) -> None:
    """A one-line error for a weight subfolder without ``.safetensors`` files (e.g. only pickled ``.bin``), before
    diffusers sees it; the loaders then run with ``use_safetensors=True``, so no pickle is ever opened."""
    for name in WEIGHT_FOLDERS:
        files = [p.name for p in (root / name).iterdir() if p.is_file()]
        if not any(f.endswith((".safetensors", ".safetensors.index.json")) for f in files):
            pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
            held = f"only {', '.join(sorted(pickled))}" if pickled else "no weights"
            raise PriorLoadError(f"{root / name} holds {held}, no .safetensors: SDI loads safetensors only (pickled "
                                 "weights can run code); convert them, e.g. save_pretrained(..., "
                                 "safe_serialization=True) on a trusted machine, or get the safetensors release")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (as threestudio runs SD), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_stable_diffusion(
    spec: str = DEFAULT_HUB_ID,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    options: StableDiffusionOptions | None = None,
    cache_dir: str | Path | None = None,
    **option_overrides,
) -> StableDiffusionPrior:
    """Load a Stable Diffusion prior from a diffusers folder or a cached hub id, never from the network.

    ``dtype`` defaults to fp16 on CUDA and fp32 on CPU (bf16 is fine on CUDA too). Keyword options
    override fields of ``options`` (a typo raises ``TypeError``). Attention runs through PyTorch's
    scaled_dot_product_attention (diffusers' ``AttnProcessor2_0``).
    """
    opts = dataclasses.replace(options or StableDiffusionOptions(), **option_overrides)
    root = resolve_weights(spec, cache_dir)
    dtype = dtype or default_dtype(device)
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise PriorLoadError("Stable Diffusion needs diffusers and transformers: pip install 'sdi[sd]'") from err
    kw = dict(local_files_only=True, dtype=dtype, use_safetensors=True)  # never unpickle
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw).to(device)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw).to(device)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = f"could not load Stable Diffusion from {str(root)!r} ({reason}); {_how_to_get(spec)}"
        raise PriorLoadError(message) from err
    unet.set_attn_processor(AttnProcessor2_0())
    scheduler = DDIMScheduler.from_config(scheduler_config)
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    return StableDiffusionPrior(unet, vae, text_encoder, tokenizer, scheduler.alphas_cumprod, prediction_type, opts)


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """``torch.cuda.max_memory_allocated`` on a CUDA device, 0 elsewhere."""
    if device is not None and torch.device(device).type != "cuda":
        return 0
    return torch.cuda.max_memory_allocated(device) if torch.cuda.is_available() else 0
