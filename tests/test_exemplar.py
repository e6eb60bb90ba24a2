"""The exemplar prior against a brute-force posterior mean; CFG, DDIM sampling with it; the built-in
image set and the image-folder loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdi.data.builtin import BUILTIN_LABELS, DEFAULT_LABEL, builtin_images
from sdi.data.folder import ImageFolderError, load_image_folder
from sdi.diffusion.ddim import ddim_sample
from sdi.diffusion.guidance import cfg_combine, eps_fn_for, guided_eps
from sdi.diffusion.parametrization import add_noise
from sdi.diffusion.schedules import sampling_grid
from sdi.diffusion.denoiser import Denoiser
from sdi.priors.exemplar import ExemplarPrior, UnknownPrompt
from sdi.scene.cameras import cameras_along

LABELS = ["a", "b", "a", "c", "b"]


def _tiny_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five (3, 4, 4) images in [-1, 1] and a view direction for each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    views = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return images, views


def brute_force_eps(ac, images, labels, x_t, t, prompt, views=None, image_views=None, kappa=0.0):
    """eps = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a), the posterior over exemplars from explicit Gaussian
    likelihoods N(x_t; sqrt(a) X_i, (1 - a) I) times pi_i (uniform, or exp(kappa cos(view, view_i)))."""
    a = float(ac[t])
    out = torch.empty_like(x_t, dtype=torch.float64)
    for b, x in enumerate(x_t.double()):
        log_w, members = [], []
        for i, (image, label) in enumerate(zip(images, labels)):
            if prompt and label != prompt:
                continue
            sq = float(((x - math.sqrt(a) * image) ** 2).sum())
            log_lik = -sq / (2 * (1 - a)) - x.numel() / 2 * math.log(2 * math.pi * (1 - a))
            log_pi = 0.0
            if views is not None:
                log_pi = kappa * float(views[b] @ image_views[i]) / float(views[b].norm() * image_views[i].norm())
            log_w.append(log_lik + log_pi)
            members.append(image)
        w = torch.softmax(torch.tensor(log_w, dtype=torch.float64), 0)
        mean = sum(wi * m for wi, m in zip(w, members))
        out[b] = (x - math.sqrt(a) * mean) / math.sqrt(1 - a)
    return out


def _queries(images, t: int, prior: ExemplarPrior, seed: int = 1) -> torch.Tensor:
    """Noisy versions of the first and fourth exemplars at level t (so the posterior is not one-hot)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, *images.shape[1:], generator=g, dtype=torch.float64)
    return add_noise(images[[0, 3]], noise, prior.alphas_cumprod[t].double())


@pytest.mark.parametrize("t", [50, 400, 900])
@pytest.mark.parametrize("with_views", [False, True])
def test_predict_eps_is_brute_force_posterior(t, with_views):
    images, views = _tiny_set()
    kappa = 2.0 if with_views else 0.0
    prior = ExemplarPrior(images, LABELS, views=views if with_views else None, view_concentration=kappa)
    x_t = _queries(images, t, prior)
    cameras = cameras_along(torch.randn(2, 3, generator=torch.Generator().manual_seed(5)))
    q = cameras.view_directions().double() if with_views else None
    ts = torch.full((2,), t, dtype=torch.long)
    got = prior.predict_eps(x_t, ts, ["a", "", "c"], cameras if with_views else None)
    assert got.shape == (3, *x_t.shape)
    for k, prompt in enumerate(["a", "", "c"]):
        expected = brute_force_eps(prior.alphas_cumprod, images, LABELS, x_t, t, prompt, q, views, kappa)
        torch.testing.assert_close(got[k], expected, atol=1e-9, rtol=1e-9)


def test_view_kernel_changes_the_prediction():
    images, views = _tiny_set()
    prior = ExemplarPrior(images, LABELS, views=views, view_concentration=4.0)
    x_t, ts = _queries(images, 900, prior), torch.full((2,), 900)
    with_views = prior.predict_eps(x_t, ts, [""], cameras_along(views[[1, 2]]))
    assert not torch.allclose(with_views, prior.predict_eps(x_t, ts, [""]))


def test_is_a_denoiser_and_guidance_branches():
    images, _ = _tiny_set()
    prior = ExemplarPrior(images, LABELS)
    assert isinstance(prior, Denoiser)
    x_t, ts = _queries(images, 600, prior), torch.full((2,), 600)
    cond, uncond = prior.predict_eps(x_t, ts, ["b", ""])
    torch.testing.assert_close(guided_eps(prior, x_t, ts, "b", 1.0), cond)
    torch.testing.assert_close(guided_eps(prior, x_t, ts, "b", 0.0), uncond)
    torch.testing.assert_close(guided_eps(prior, x_t, ts, "b", 7.5), cfg_combine(uncond, cond, 7.5))


def test_ddim_sampling_lands_on_an_exemplar_of_the_label():
    images, labels = builtin_images(size=32, per_class=4)
    prior = ExemplarPrior(images, labels)
    grid = sampling_grid(prior.alphas_cumprod, 50, final_alpha=1.0)
    x_T = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for label in (DEFAULT_LABEL, "rings"):
        sample = ddim_sample(eps_fn_for(prior, label, 1.0), x_T, grid)
        dist = (sample[:, None].float() - images[None]).abs().flatten(2).amax(-1)  # (3 samples, N images)
        best = dist.argmin(1)
        assert bool((dist.min(1).values < 1e-3).all()), dist.min(1).values
        assert all(labels[i] == label for i in best.tolist())


def test_unknown_prompt_lists_labels():
    images, _ = _tiny_set()
    prior = ExemplarPrior(images, LABELS)
    with pytest.raises(UnknownPrompt, match="a, b, c") as err:
        prior.predict_eps(images[:1], torch.tensor([10]), ["dog"])
    assert "'dog'" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


# -- built-in image set ------------------------------------------------------------------------------


def test_builtin_images_shapes_range_and_labels():
    images, labels = builtin_images()
    n = len(BUILTIN_LABELS) * 64
    assert images.shape == (n, 3, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert len(BUILTIN_LABELS) >= 4 and DEFAULT_LABEL in BUILTIN_LABELS
    assert labels == [label for label in BUILTIN_LABELS for _ in range(64)]
    small, small_labels = builtin_images(size=32, per_class=3)
    assert small.shape == (len(BUILTIN_LABELS) * 3, 3, 32, 32) and len(small_labels) == len(small)


def test_builtin_images_are_deterministic_distinct_and_detailed():
    images, _ = builtin_images(size=32, per_class=6)
    again, _ = builtin_images(size=32, per_class=6)
    assert torch.equal(images, again)
    first, _ = builtin_images(size=32, per_class=2)  # variant k does not depend on per_class
    assert torch.equal(first[:2], images[:2])
    flat = images.flatten(1)
    gaps = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert float(gaps.min()) > 1.0  # no two images alike
    # Fine detail: strong neighbour-to-neighbour jumps (edges) in every image.
    across = (images[..., 1:] - images[..., :-1]).abs().amax(dim=(1, 2, 3))
    down = (images[..., 1:, :] - images[..., :-1, :]).abs().amax(dim=(1, 2, 3))
    assert bool((torch.maximum(across, down) > 0.3).all())
    assert images.std(dim=(1, 2, 3)).min() > 0.2  # two well-separated colours, not a flat field


def test_builtin_images_reject_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        builtin_images(size=4)
    with pytest.raises(ValueError, match="per_class"):
        builtin_images(per_class=0)


# -- image folder -------------------------------------------------------------------------------------


def _write_png(path, seed: int, size: int = 8) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_load_image_folder_flat_round_trip(tmp_path):
    folder = tmp_path / "flowers"
    folder.mkdir()
    pixels = [_write_png(folder / f"{k}.png", k) for k in range(3)]
    (folder / "notes.txt").write_text("not an image")
    images, labels = load_image_folder(folder, size=8)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert labels == ["flowers"] * 3
    for image, p in zip(images, pixels):
        expected = torch.from_numpy(p).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def test_load_image_folder_subfolders_are_labels_and_resize(tmp_path):
    for name, count in (("cats", 2), ("dogs", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            _write_png(tmp_path / name / f"{k}.png", k, size=20)
    Image.new("L", (30, 10), 128).save(tmp_path / "dogs" / "grey.JPG")  # grey, wide, upper-case extension
    images, labels = load_image_folder(tmp_path, size=16)
    assert images.shape == (4, 3, 16, 16)
    assert labels == ["cats", "cats", "dogs", "dogs"]
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    torch.testing.assert_close(images[3], torch.full((3, 16, 16), 128 / 127.5 - 1), atol=0.02, rtol=0)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ImageFolderError, match="no PNG/JPG images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    _write_png(tmp_path / "broken" / "good.png", 0)
    (tmp_path / "broken" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageFolderError, match="bad.png") as err:
        load_image_folder(tmp_path / "broken")
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)
