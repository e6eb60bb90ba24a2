"""Image metrics for benchmarks: pure functions on batches, one value per image.

Images are float tensors ``(B, 3, H, W)`` in ``[0, 1]``; masks are ``(B, 1, H, W)`` (float or bool).
Every function returns a ``(B,)`` tensor, so a caller can average, take a median or keep per-view values.

| function | definition |
|---|---|
| ``psnr`` | ``10 log10(1 / MSE)``, ``inf`` for identical images |
| ``ssim`` | mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, as scikit-image |
| ``mask_iou`` | ``|A and B| / |A or B|`` after thresholding |
| ``high_frequency_energy`` | mean squared ``img - GaussianBlur(img)``, optionally over a mask only |
| ``detail_ratio`` | ``HF(img) / HF(reference)`` |
| ``masked_detail_ratio`` | ``HF(img) / HF(reference)`` over the reference's object mask eroded by the blur radius |
| ``erode_mask`` | ``mask > 0.5`` shrunk by ``pixels`` (a pixel stays when its whole square neighbourhood is in) |
| ``saturation_error`` | mean ``|S(img) - S(reference)|`` (HSV saturation) over a mask |
| ``l2_distance`` | RMS difference ``sqrt(mean((a - b)^2))`` |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# SSIM constants of Wang et al. (2004) for data range 1, and scikit-image's Gaussian window:
# sigma 1.5 truncated at 3.5 sigma -> radius int(3.5 * 1.5 + 0.5) = 5, an 11x11 window.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_SIGMA, _SSIM_TRUNCATE = 1.5, 3.5

Float4 = Tensor  # (B, C, H, W), for readability in signatures


def _check_images(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) image tensor in [0, 1], got {shape}")


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str] = ("a", "b")) -> None:
    _check_images(names[0], a)
    _check_images(names[1], b)
    if a.shape != b.shape:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {shapes}")


def _check_mask(name: str, m: Tensor, like: Tensor) -> None:
    if not isinstance(m, Tensor) or m.dim() != 4 or m.shape[1] != 1:
        shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ValueError(f"{name} must be a (B, 1, H, W) mask, got {shape}")
    if m.shape[0] != like.shape[0] or m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"{name} of shape {tuple(m.shape)} does not match images of shape {tuple(like.shape)}")


def _gaussian_kernel1d(sigma: float, radius: int, like: Tensor) -> Tensor:
    """Normalised 1D Gaussian taps at offsets -radius..radius (scipy.ndimage's gaussian_filter kernel)."""
    x = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _separable_filter(x: Float4, kernel: Tensor, padding_mode: str | None) -> Tensor:
    """Filter every channel of (B, C, H, W) by ``kernel`` along H then W; ``None`` = valid (no padding)."""
    c, r = x.shape[1], (len(kernel) - 1) // 2
    if padding_mode is not None:
        x = F.pad(x, (r, r, r, r), mode=padding_mode)
    kh = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def blur_radius(sigma: float) -> int:
    """Kernel radius of ``gaussian_blur``: ``max(1, ceil(3 sigma))`` pixels."""
    return max(1, math.ceil(3 * sigma))


def gaussian_blur(img: Float4, sigma: float) -> Float4:
    """Gaussian blur of (B, C, H, W) with reflect padding, kernel radius ``blur_radius(sigma)``."""
    radius = blur_radius(sigma)
    if min(img.shape[-2:]) <= radius:
        raise ValueError(f"images of size {tuple(img.shape[-2:])} are too small for a blur of sigma {sigma}")
    return _separable_filter(img, _gaussian_kernel1d(sigma, radius, img), "reflect")


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB, data range 1: ``10 log10(1 / mean((a - b)^2))`` per image.

    (B, 3, H, W) x2 -> (B,); identical images give ``inf``.
    """
    _check_pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity (Wang et al. 2004, Eq. 13) per image, data range 1.

    Local means, variances and covariance use an 11x11 Gaussian window (sigma 1.5) with population
    (not sample) statistics; ``SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))``
    with ``C1 = 0.01^2, C2 = 0.03^2``, averaged over the pixels whose window lies inside the image and over
    the channels. Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``. (B, 3, H, W) x2 -> (B,); needs H, W >= 11.
    """
    _check_pair(a, b)
    radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
    if min(a.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"ssim needs images of at least {2 * radius + 1}x{2 * radius + 1}, got {tuple(a.shape[-2:])}")
    kernel = _gaussian_kernel1d(_SSIM_SIGMA, radius, a)
    # scikit-image filters the whole image then crops a border of `radius`; a valid convolution gives
    # exactly the kept pixels without any padding.
    mu_a, mu_b, aa, bb, ab = _separable_filter(torch.cat([a, b, a * a, b * b, a * b], 1), kernel, None).split(3, 1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def mask_iou(a: Tensor, b: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of the masks ``a > threshold`` and ``b > threshold`` per image.

    (B, 1, H, W) x2 -> (B,); two empty masks count as a perfect match (1).
    """
    _check_mask("a", a, a)
    _check_mask("b", b, a)
    ma, mb = (a.float() > threshold).flatten(1), (b.float() > threshold).flatten(1)
    inter = (ma & mb).sum(1).float()
    union = (ma | mb).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def high_frequency_energy(img: Tensor, sigma: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Mean squared high-pass residual ``mean((img - GaussianBlur_sigma(img))^2)`` per image.

    The blur uses reflect padding, so flat borders add no energy. ``mask`` (B, 1, H, W) weights pixels
    (``sum(m r^2) / (3 sum(m))``; soft masks allowed, an empty one gives NaN); ``None`` = all pixels. It
    selects where the residual is averaged, not what is blurred: see ``masked_detail_ratio`` to keep the
    outside out. (B, 3, H, W) -> (B,); 0 for a flat image.
    """
    _check_images("img", img)
    residual = (img - gaussian_blur(img, sigma)).pow(2)
    if mask is None:
        return residual.flatten(1).mean(1)
    _check_mask("mask", mask, img)
    m = mask.to(residual.dtype)
    return (residual.mean(1, keepdim=True) * m).flatten(1).sum(1) / m.flatten(1).sum(1)


def detail_ratio(img: Tensor, reference: Tensor, sigma: float = 1.0) -> Tensor:
    """``high_frequency_energy(img) / high_frequency_energy(reference)`` per image.

    1 = as much fine detail as the reference, < 1 blurrier, > 1 noisier or sharper. The denominator is
    clamped at 1e-12, so a flat reference gives a very large ratio. (B, 3, H, W) x2 -> (B,).
    """
    _check_pair(img, reference, ("img", "reference"))
    return high_frequency_energy(img, sigma) / high_frequency_energy(reference, sigma).clamp_min(1e-12)


def erode_mask(mask: Tensor, pixels: int) -> Tensor:
    """``mask > 0.5`` shrunk by ``pixels``: a pixel stays 1 when every image pixel within Chebyshev distance
    ``pixels`` is in the mask (a (2 pixels + 1)^2 square min filter). Beyond the image border counts as inside,
    so an all-ones mask stays all ones. (B, 1, H, W) -> float {0, 1} (B, 1, H, W)."""
    _check_mask("mask", mask, mask)
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"erosion must be a non-negative whole number of pixels, got {pixels!r}")
    m = (mask.float() > 0.5).float()
    # max_pool2d pads with -inf, so on -m the border never wins: pixels off the image do not erode.
    return -F.max_pool2d(-m, 2 * pixels + 1, stride=1, padding=pixels) if pixels else m


def masked_detail_ratio(
    img: Tensor, reference: Tensor, mask: Tensor, sigma: float = 1.0, erode: int | None = None
) -> Tensor:
    """``detail_ratio`` inside the object: ``HF(img; m) / HF(reference; m)`` with ``m = erode_mask(mask, erode)``.

    ``mask`` (B, 1, H, W) is the reference's object mask (thresholded at 0.5). ``erode`` defaults to
    ``blur_radius(sigma)`` (3 pixels at sigma 1): the residual at a pixel depends only on pixels within that
    radius, so the result is then exactly independent of everything outside ``mask`` (floaters, speckle,
    the background) and the silhouette step itself adds nothing. Pixels on the reference's own texture
    edges still count, in both the numerator and the denominator. NaN where the eroded mask is empty;
    the denominator is clamped at 1e-12. (B, 3, H, W) x2, (B, 1, H, W) -> (B,).
    """
    _check_pair(img, reference, ("img", "reference"))
    _check_mask("mask", mask, img)
    m = erode_mask(mask, blur_radius(sigma) if erode is None else erode)
    return high_frequency_energy(img, sigma, m) / high_frequency_energy(reference, sigma, m).clamp_min(1e-12)


def hsv_saturation(img: Tensor) -> Tensor:
    """HSV saturation ``(max - min) / max`` over RGB, 0 where ``max = 0``: (B, 3, H, W) -> (B, 1, H, W)."""
    _check_images("img", img)
    hi = img.amax(1, keepdim=True)
    lo = img.amin(1, keepdim=True)
    return torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))


def saturation_error(img: Tensor, reference: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute difference of HSV saturation, ``sum(m |S(img) - S(ref)|) / sum(m)`` per image.

    ``mask`` (B, 1, H, W) weights pixels (1 inside, 0 outside; soft masks allowed); ``None`` = all
    pixels. An empty mask gives NaN. Detects the over-saturated colours of high-CFG score distillation.
    """
    _check_pair(img, reference, ("img", "reference"))
    diff = (hsv_saturation(img) - hsv_saturation(reference)).abs()
    if mask is None:
        return diff.flatten(1).mean(1)
    _check_mask("mask", mask, img)
    m = mask.to(diff.dtype)
    return (diff * m).flatten(1).sum(1) / m.flatten(1).sum(1)


def l2_distance(a: Tensor, b: Tensor) -> Tensor:
    """Root-mean-square difference ``sqrt(mean((a - b)^2))`` per image: (B, 3, H, W) x2 -> (B,)."""
    _check_pair(a, b)
    return (a - b).pow(2).flatten(1).mean(1).sqrt()
