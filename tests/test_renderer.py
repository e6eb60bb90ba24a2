"""Volume renderer, fields and geometry regularizers: hand-worked values on tiny tensors,
analytic scenes (slab, sphere) and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdi.scene import regularizers as reg
from sdi.scene.fields import (
    DirectionBackground,
    FieldOutput,
    GridField,
    GridFieldConfig,
    HashGridField,
    HashGridFieldConfig,
    SolidBackground,
)
from sdi.scene.hashgrid import HashGridEncoding, hash_coords
from sdi.scene.occupancy import OccupancyGrid
from sdi.scene.renderer import (
    RenderOutput,
    normals_autograd,
    normals_finite_difference,
    ray_aabb,
    render,
    render_weights,
    stratified_samples,
)


def pinhole_rays(size: int = 32, distance: float = 3.0, fovy_deg: float = 40.0, batch: int = 1):
    """Rays of a camera at (0, 0, distance) looking down -z (OpenGL), +y up: (B, H, W, 3) each."""
    half = math.tan(math.radians(fovy_deg) / 2)
    coords = (torch.arange(size) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-coords * half, coords * half, indexing="ij")  # row 0 is the top
    dirs = F.normalize(torch.stack([x, y, -torch.ones_like(x)], -1), dim=-1)
    origins = torch.tensor([0.0, 0.0, distance]).expand_as(dirs)
    return origins.expand(batch, -1, -1, -1).clone(), dirs.expand(batch, -1, -1, -1).clone()


class SphereField(nn.Module):
    """Smooth ball of radius 0.5 with a high density inside and a constant grey albedo."""

    def __init__(self, radius: float = 0.5, peak: float = 200.0, sharpness: float = 150.0):
        super().__init__()
        self.radius, self.peak, self.sharpness = radius, peak, sharpness
        self.gain = nn.Parameter(torch.tensor(1.0))

    def density(self, x):
        return self.gain * self.peak * torch.sigmoid((self.radius - x.norm(dim=-1)) * self.sharpness)

    def forward(self, x):
        return FieldOutput(density=self.density(x), albedo=torch.full_like(x, 0.5))


# ------------------------------------------------------------------ render_weights


def test_render_weights_hand_values():
    t0 = torch.tensor([[0.0, 0.5, 0.75]])
    t1 = torch.tensor([[0.5, 0.75, 1.75]])
    sig = torch.tensor([[1.0, 2.0, 0.5]])  # sigma * dt = 0.5 for every sample
    w, trans, alpha = render_weights(t0, t1, sig)
    a = 1 - math.exp(-0.5)
    torch.testing.assert_close(alpha, torch.full((1, 3), a))
    torch.testing.assert_close(trans, torch.tensor([[1.0, math.exp(-0.5), math.exp(-1.0)]]))
    torch.testing.assert_close(w, torch.tensor([[a, math.exp(-0.5) * a, math.exp(-1.0) * a]]))


def test_render_weights_gradient_matches_manual_cumprod():
    torch.manual_seed(0)
    t0 = torch.cumsum(torch.rand(2, 5, dtype=torch.float64), -1)
    t1 = t0 + torch.rand(2, 5, dtype=torch.float64)
    sig = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    colors = torch.rand(2, 5, dtype=torch.float64)

    def manual(s):
        alpha = 1 - torch.exp(-s * (t1 - t0))
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], -1), -1)
        return (trans * alpha * colors).sum()

    (g_ours,) = torch.autograd.grad((render_weights(t0, t1, sig)[0] * colors).sum(), sig)
    (g_manual,) = torch.autograd.grad(manual(sig), sig)
    torch.testing.assert_close(g_ours, g_manual)
    # d w_0 / d sigma_0 = dt_0 exp(-sigma_0 dt_0), by hand
    (g0,) = torch.autograd.grad(render_weights(t0, t1, sig)[0][0, 0], sig)
    dt0 = t1[0, 0] - t0[0, 0]
    torch.testing.assert_close(g0[0, 0], dt0 * torch.exp(-sig[0, 0] * dt0))
    assert g0[0, 1:].abs().max() == 0 and g0[1].abs().max() == 0


def test_constant_slab_transmittance_is_analytic():
    c, length, n = 2.0, 1.5, 300
    near, far = torch.zeros(1), torch.full((1,), length)
    t0, t1 = stratified_samples(near, far, n, perturb=False)
    w, trans, _ = render_weights(t0, t1, torch.full_like(t0, c))
    torch.testing.assert_close(trans, torch.exp(-c * t0))
    torch.testing.assert_close(w.sum(), torch.tensor(1 - math.exp(-c * length)))


# ------------------------------------------------------------------ rays and samples


def test_ray_aabb_hits_and_misses():
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb(origins, dirs)
    torch.testing.assert_close(near, torch.tensor([2.0, 0.0, 0.0]))
    assert far[0] == 4.0 and far[1] == near[1] and far[2] == 1.0  # miss: zero length; inside: starts at 0


def test_stratified_samples_stay_in_their_bins():
    g = torch.Generator().manual_seed(0)
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.5])
    t0, t1 = stratified_samples(near, far, 8, generator=g)
    mid = 0.5 * (t0 + t1)
    dt = ((far - near) / 8)[:, None]
    bins = torch.arange(8) * dt + near[:, None]
    assert ((mid >= bins) & (mid <= bins + dt)).all()
    torch.testing.assert_close(t1 - t0, dt.expand_as(t0))


# ------------------------------------------------------------------ analytic sphere


def _disk_masks(size, distance=3.0, radius=0.5, fovy_deg=40.0):
    """Pixels well inside / well outside the projected disk of the sphere."""
    half = math.tan(math.radians(fovy_deg) / 2)
    r_img = math.tan(math.asin(radius / distance)) / half  # in [-1, 1] image units
    coords = (torch.arange(size) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    rr = (x.square() + y.square()).sqrt()
    return rr < r_img - 0.1, rr > r_img + 0.1


def test_sphere_opacity_is_one_inside_projected_disk_and_zero_outside():
    out = render(SphereField(), SolidBackground(), pinhole_rays(32), num_samples=96, perturb=False, normals=None)
    inside, outside = _disk_masks(32)
    op = out.opacity[0, 0]
    assert op[inside].min() > 0.99 and op[outside].max() < 0.01
    # white background outside, grey albedo inside
    assert out.rgb[0, :, outside].min() > 0.99
    torch.testing.assert_close(out.rgb[0, :, inside], torch.full_like(out.rgb[0, :, inside], 0.5), atol=0.01, rtol=0)
    # depth at the centre pixel ~ distance to the front of the sphere
    assert abs(out.depth[0, 0, 16, 16].item() - 2.5) < 0.05


def test_occupancy_skipping_matches_dense_and_evaluates_fewer_points():
    field, rays = SphereField(), pinhole_rays(32)
    occ = OccupancyGrid(resolution=32, threshold=0.1)
    assert occ.update(0, field.density, generator=torch.Generator().manual_seed(0))
    assert not occ.update(1, field.density)  # only every update_every steps
    dense = render(field, SolidBackground(), rays, 64, perturb=False, normals=None)
    skip = render(field, SolidBackground(), rays, 64, perturb=False, normals=None, occupancy=occ)
    assert skip.n_evaluated < 0.3 * dense.n_evaluated
    torch.testing.assert_close(skip.rgb, dense.rgb, atol=2e-3, rtol=0)
    torch.testing.assert_close(skip.opacity, dense.opacity, atol=2e-3, rtol=0)


@pytest.mark.parametrize("fn", [normals_autograd, normals_finite_difference])
def test_sphere_normals_point_outward(fn):
    torch.manual_seed(0)
    x = F.normalize(torch.randn(64, 3), dim=-1) * 0.5
    n = fn(SphereField().density, x)
    assert (n * F.normalize(x, dim=-1)).sum(-1).min() > 0.99


def test_rendered_normal_map_and_lambertian_shading_of_sphere():
    rays = pinhole_rays(16)
    light = torch.tensor([[0.0, 0.0, 10.0]])  # behind the camera: the front of the sphere is lit
    out = render(SphereField(), SolidBackground(), rays, 64, "lambertian", light, perturb=False)
    inside, _ = _disk_masks(16)
    nrm = F.normalize(out.normals[0], dim=0)
    assert nrm[2, 7:9, 7:9].min() > 0.95  # centre of the disk faces the camera (+z)
    assert nrm[0, 7:9, 5:7].max() < -0.2 and nrm[0, 7:9, 9:11].min() > 0.2  # left side points left, right side right
    assert out.rgb[0, :, inside].max() <= 0.5 + 1e-4  # albedo 0.5 times lighting <= 1
    text = render(SphereField(), SolidBackground(), rays, 64, "textureless", light, perturb=False)
    assert text.rgb[0, :, 8, 8].min() > 0.9  # white, facing the light


@pytest.mark.parametrize("normals", ["auto", "autograd", "finite_difference"])
@pytest.mark.parametrize("make_field", [
    lambda: GridField(GridFieldConfig(resolution=16)),
    lambda: HashGridField(HashGridFieldConfig(n_levels=4, log2_hashmap_size=12, hidden_dim=16)),
])
def test_gradients_reach_field_and_background(make_field, normals):
    field, bg = make_field(), DirectionBackground()
    rays = pinhole_rays(8, distance=2.0, fovy_deg=60.0, batch=2)
    out = render(field, bg, rays, 24, "lambertian", torch.tensor([[0.0, 1.0, 3.0]] * 2),
                 generator=torch.Generator().manual_seed(0), normals=normals)
    assert out.rgb.shape == (2, 3, 8, 8) and out.normals.shape == (2, 3, 8, 8)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1
    out.rgb.mean().backward(retain_graph=True)
    grads = [p.grad for p in field.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None for p in bg.parameters())
    field.zero_grad()
    # a loss on the normals alone reaches the field parameters through the normal computation
    (reg.orientation_loss(out) + out.normals.square().sum()).backward()
    assert sum(p.grad.abs().sum() for p in field.parameters() if p.grad is not None) > 0


def test_grid_field_starts_as_centre_blob():
    field = GridField(GridFieldConfig(resolution=8))
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]])
    out = field(pts)
    assert out.density[0] > 5 and out.density[1] < 0.1
    assert out.albedo.shape == (2, 3) and ((out.albedo > 0) & (out.albedo < 1)).all()
    torch.testing.assert_close(field.density(pts), out.density)


def test_chunked_render_equals_full():
    field = GridField(GridFieldConfig(resolution=8))
    rays = pinhole_rays(8, distance=2.0)
    full = render(field, SolidBackground(), rays, 16, perturb=False)
    chunked = render(field, SolidBackground(), rays, 16, perturb=False, chunk=20)
    torch.testing.assert_close(chunked.rgb, full.rgb)
    torch.testing.assert_close(chunked.normals, full.normals)
    torch.testing.assert_close(chunked.ray_indices, full.ray_indices)


# ------------------------------------------------------------------ hash grid


def test_hash_is_deterministic_and_matches_hand_value():
    corners = torch.tensor([[1, 1, 1], [3, 0, 7], [1, 1, 1]])
    h1, h2 = hash_coords(corners, 2**19), hash_coords(corners.clone(), 2**19)
    torch.testing.assert_close(h1, h2)
    assert h1[0] == h1[2] and ((h1 >= 0) & (h1 < 2**19)).all()
    assert h1[1].item() == (3 ^ 0 ^ (7 * 805459861)) & (2**19 - 1)
    assert h1[0].item() == (1 ^ 2654435761 ^ 805459861) & (2**19 - 1)


def test_hash_encoding_is_continuous_and_hits_exact_corners():
    torch.manual_seed(0)
    cfg = HashGridFieldConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    enc = HashGridEncoding(cfg)
    with torch.no_grad():
        enc.tables.normal_()
    x = torch.rand(200, 3)
    torch.testing.assert_close(enc(x + 1e-5), enc(x), atol=2e-3, rtol=0)  # includes cell crossings
    # across a level-0 cell boundary (x = 0.25 with base resolution 4): both sides agree
    b = torch.tensor([[0.25 - 1e-6, 0.3, 0.6], [0.25 + 1e-6, 0.3, 0.6]])
    out = enc(b)
    torch.testing.assert_close(out[0], out[1], atol=1e-3, rtol=0)
    # at a grid vertex of level 0 (dense level: 5^3 <= 2^10) the feature is the table entry
    v = enc(torch.tensor([[0.25, 0.5, 0.75]]))[0, :2]
    torch.testing.assert_close(v, enc.tables[0, (1 * 5 + 2) * 5 + 3])


# ------------------------------------------------------------------ regularizers


def _sphere_normal_map(size=16, sign=1.0):
    coords = (torch.arange(size) + 0.5) / size * 1.6 - 0.8
    y, x = torch.meshgrid(-coords, coords, indexing="ij")  # row 0 is the top (+y)
    z = (1 - x.square() - y.square()).clamp(min=0).sqrt()
    return torch.stack([sign * x, sign * y, z])[None]  # (1, 3, H, W), camera space


def test_convexity_loss_zero_on_convex_positive_on_concave():
    convex, concave = _sphere_normal_map(sign=1.0), _sphere_normal_map(sign=-1.0)
    assert reg.convexity_loss(convex).item() == 0.0
    assert reg.convexity_loss(concave).item() > 0.05
    flat = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None].expand(1, 3, 16, 16)
    assert reg.convexity_loss(flat).item() < 1e-6
    # world space: rotate the normals and the camera axes together -> same value
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    q = q * torch.det(q)  # a proper rotation
    rot = torch.einsum("ij,bjhw->bihw", q, concave)
    right, up = q[:, 0][None], q[:, 1][None]
    torch.testing.assert_close(reg.convexity_loss(rot, right, up), reg.convexity_loss(concave))


def test_image_axes_of_pinhole_camera():
    right, up = reg.image_axes(pinhole_rays(8)[1])
    torch.testing.assert_close(right, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(up, torch.tensor([[0.0, 1.0, 0.0]]))


def _fake_output(normal_z: float, opacity: float = 1.0) -> RenderOutput:
    """One ray looking down -z with a single shaded sample of the given normal."""
    w = torch.tensor([opacity], requires_grad=True)
    return RenderOutput(
        rgb=torch.zeros(1, 3, 1, 1), opacity=w.view(1, 1, 1, 1), depth=torch.zeros(1, 1, 1, 1), normals=None,
        weights=w.view(1, 1, 1, 1), t_mids=torch.ones(1, 1, 1, 1),
        directions=torch.tensor([0.0, 0.0, -1.0]).view(1, 1, 1, 3), ray_indices=torch.tensor([0]),
        sample_weights=w, sample_normals=torch.tensor([[0.0, (1 - normal_z**2) ** 0.5, normal_z]]),
    )


def test_orientation_loss_penalises_normals_facing_away():
    assert reg.orientation_loss(_fake_output(normal_z=1.0)).item() == 0.0  # facing the camera
    away = _fake_output(normal_z=-0.8)
    loss = reg.orientation_loss(away)
    assert abs(loss.item() - 0.64) < 1e-6  # w max(0, n . d)^2 = 1 * 0.8^2
    away.sample_normals.requires_grad_(True)
    reg.orientation_loss(away).backward()
    assert away.sample_normals.grad[0, 2] < 0  # descent turns the normal towards the camera (+z)
    assert away.sample_weights.grad is None  # weights are detached (DreamFusion's stop-gradient)


def test_opacity_sparsity_and_z_variance_losses():
    out = _fake_output(1.0, opacity=0.5)
    assert abs(reg.opacity_loss(out).item() - math.log(2)) < 1e-5
    assert reg.opacity_loss(_fake_output(1.0, opacity=1.0)).item() < 1e-3
    assert abs(reg.sparsity_loss(out).item() - math.sqrt(0.26)) < 1e-6
    w = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    t = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    two = RenderOutput(
        out.rgb, out.opacity, out.depth, None, w, t, out.directions, out.ray_indices, w.view(-1)[:1], None
    )
    assert abs(reg.z_variance_loss(two).item() - 1.0) < 1e-6  # mean 2, variance 0.5 * 1 + 0.5 * 1


def test_grid_field_normals_agree_with_autograd_and_train_the_grid():
    torch.manual_seed(0)
    field = GridField(GridFieldConfig(resolution=24))
    with torch.no_grad():  # a smooth bump on top of the blob
        zz, yy, xx = torch.meshgrid(*[torch.linspace(-1, 1, 24)] * 3, indexing="ij")
        field.grid[0, 0] = 3 * torch.exp(-((xx - 0.3).square() + yy.square() + (zz + 0.2).square()) / 0.2)
    x = (torch.rand(300, 3) - 0.5) * 1.2
    cos = (field.normals(x) * normals_autograd(field.density, x)).sum(-1)
    assert cos.median() > 0.99 and cos.min() > 0.8
    field.normals(x)[:, 0].sum().backward()
    assert field.grid.grad[0, 0].abs().sum() > 0


def test_auto_normals_use_field_method_when_present():
    from sdi.scene.renderer import field_normals

    field = GridField(GridFieldConfig(resolution=8))
    x = torch.tensor([[0.3, 0.1, -0.2]])
    torch.testing.assert_close(field_normals(field, x, "auto"), field.normals(x))
    with pytest.raises(ValueError, match="unknown normals method"):
        field_normals(field, x, "sobel")


def test_render_accepts_cameras_and_convexity_of_rendered_sphere_is_small():
    import sdi.scene.cameras as cameras
    cams = cameras.orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), 3.0, 40.0, 16)
    out = render(SphereField(), SolidBackground(), cams, 48, "lambertian", cams.c2w[:, :3, 3], perturb=False)
    assert out.rgb.shape == (2, 3, 16, 16)
    assert out.opacity[:, 0, 8, 8].min() > 0.99 and out.opacity[:, 0, 0, 0].max() < 0.01
    right, up = reg.image_axes(out.directions)
    torch.testing.assert_close(right, cams.c2w[:, :3, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(up, cams.c2w[:, :3, 1], atol=1e-5, rtol=0)
    assert reg.convexity_loss(out.normals, right, up).item() < 1e-4  # a sphere is convex from any view
    # mirroring the normals' image-plane components (a dent instead of a bump) is penalised
    inward = out.normals - 2 * (out.normals * right[..., None, None]) * right[..., None, None]
    inward = inward - 2 * (inward * up[..., None, None]) * up[..., None, None]
    assert reg.convexity_loss(inward, right, up).item() > 0.05


def test_hash_grid_paper_config_falls_back_to_pure_pytorch_without_cuda():
    from sdi.scene.fields import hash_grid_paper_config
    from sdi.scene.hashgrid import level_resolutions

    cfg = hash_grid_paper_config(log2_hashmap_size=12)
    assert (cfg.n_levels, cfg.n_features_per_level, cfg.base_resolution, cfg.use_tcnn) == (16, 2, 16, True)
    assert level_resolutions(cfg)[0] == 16 and level_resolutions(cfg)[-1] == 4095  # floor(16 * 1.4473^15), ~4096
    field = HashGridField(cfg)
    if not torch.cuda.is_available():
        assert field.tcnn_encoding is None and field.encoding is not None
    out = field(torch.zeros(4, 3))
    assert out.density.shape == (4,) and out.albedo.shape == (4, 3)
