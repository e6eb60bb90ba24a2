"""CLIP score and CLIP-IQA, the text-alignment and quality metrics of the paper's Table 1.

- CLIP score (Hessel et al. 2021, torchmetrics' ``CLIPScore``): ``100 * max(cos(E_img(x), E_txt(y)), 0)``;
  the paper uses ViT-B/32 (``openai/clip-vit-base-patch32``).
- CLIP-IQA (Wang et al. AAAI 2023, torchmetrics' ``CLIPImageQualityAssessment``): for each antonym pair
  (positive, negative), ``softmax(100 * [cos(x, pos), cos(x, neg)])[0]``, the probability of the positive
  prompt, in [0, 1] (Table 1 prints it x100: quality, sharp, real).

The CLIP model is read from a LOCAL folder (``CLIPModel.save_pretrained`` layout: ``config.json``, weights,
``vocab.json``, ``merges.txt``, optional ``preprocessor_config.json``); nothing is downloaded. Images are
preprocessed in torch as ``CLIPProcessor`` does (resize the short side, centre crop, CLIP mean/std), so
torchvision is not needed. Images are floats ``(B, 3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IQA_LOGIT_SCALE = 100.0
IQA_PROMPTS: dict[str, tuple[str, str]] = {
    "quality": ("Good photo.", "Bad photo."),
    "sharpness": ("Sharp photo.", "Blurry photo."),
    "real": ("Real photo.", "Abstract photo."),
}
"""CLIP-IQA antonym pairs (positive first), the three reported in Table 1."""


@dataclass(frozen=True)
class Clip:
    """A loaded CLIP model with what preprocessing needs."""

    model: Any
    """``transformers.CLIPModel`` in eval mode."""
    tokenizer: Any
    """The matching CLIP tokenizer."""
    image_size: int
    """Side of the square input the vision tower expects (224 for ViT-B/32)."""
    mean: tuple[float, float, float]
    """Per-channel normalisation mean."""
    std: tuple[float, float, float]
    """Per-channel normalisation std."""


def load_clip(folder: str | Path, device: str | torch.device = "cpu") -> Clip:
    """Load a CLIP model and tokenizer from a local folder (``local_files_only``; no network)."""
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no CLIP model at {folder} (config.json missing): on a machine with network run "
            f"`hf download openai/clip-vit-base-patch32 --local-dir {folder}` and pass that folder"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return Clip(model, tokenizer, int(model.config.vision_config.image_size), mean, std)


def preprocess(clip: Clip, images: Tensor) -> Tensor:
    """CLIPProcessor in torch: bicubic resize of the short side to ``image_size`` (antialiased), centre
    crop, normalise. (B, 3, H, W) in [0, 1] -> (B, 3, S, S)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
    s = clip.image_size
    h, w = images.shape[-2:]
    scale = s / min(h, w)
    size = (max(s, round(h * scale)), max(s, round(w * scale)))
    x = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (size[0] - s) // 2, (size[1] - s) // 2
    x = x[..., top : top + s, left : left + s]
    mean = torch.tensor(clip.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _pooled(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a ``BaseModelOutputWithPooling`` in 5."""
    return out if isinstance(out, Tensor) else out.pooler_output


@torch.no_grad()
def image_embeddings(clip: Clip, images: Tensor) -> Tensor:
    """Unit-norm projected image embeddings: (B, 3, H, W) -> (B, D)."""
    device = next(clip.model.parameters()).device
    emb = _pooled(clip.model.get_image_features(pixel_values=preprocess(clip, images.to(device))))
    return F.normalize(emb.float(), dim=-1)


@torch.no_grad()
def text_embeddings(clip: Clip, texts: list[str]) -> Tensor:
    """Unit-norm projected text embeddings, truncated to the model's context: N texts -> (N, D)."""
    device = next(clip.model.parameters()).device
    max_len = clip.model.config.text_config.max_position_embeddings
    tok = clip.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    emb = _pooled(clip.model.get_text_features(input_ids=ids, attention_mask=mask))
    return F.normalize(emb.float(), dim=-1)


def clip_score(clip: Clip, images: Tensor, prompts: str | list[str]) -> Tensor:
    """CLIP score ``100 * max(cos(image, prompt), 0)`` per image (torchmetrics' definition): -> (B,).

    ``prompts``: one prompt for all images, or one per image.
    """
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; pass one prompt or one per image")
    cos = (image_embeddings(clip, images) * text_embeddings(clip, prompts)).sum(-1)
    return 100 * cos.clamp_min(0)


def clip_iqa(clip: Clip, images: Tensor, prompts: dict[str, tuple[str, str]] = IQA_PROMPTS) -> dict[str, Tensor]:
    """CLIP-IQA: ``{name: P(positive)}`` per image, ``softmax(100 * [cos(x, pos), cos(x, neg)])[0]``.

    Each value is a (B,) tensor in [0, 1]; ``prompts`` maps a name to a (positive, negative) pair.
    """
    names = list(prompts)
    anchors = text_embeddings(clip, [p for name in names for p in prompts[name]])  # (2K, D): pos, neg, pos, neg...
    logits = IQA_LOGIT_SCALE * image_embeddings(clip, images) @ anchors.T
    probs = logits.view(len(images), len(names), 2).softmax(-1)[..., 0]
    return {name: probs[:, i] for i, name in enumerate(names)}
