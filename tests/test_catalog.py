"""Cameras, the procedural catalog and its ground-truth renderer."""

from __future__ import annotations

import math

import pytest
import torch

from sdi.scene.cameras import CameraSampling, Cameras, held_out_cameras, orbit_cameras, turntable_cameras, view_bin
from sdi.scene.catalog import (
    COLORS,
    PATTERNS,
    SHAPES,
    CatalogObject,
    UnknownWord,
    all_catalog_objects,
    catalog_objects,
    parse_prompt,
    vocabulary,
)
from sdi.scene.ground_truth import render_ground_truth

FRONT = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 1.75, 50.0, 48)


# ---------------------------------------------------------------- cameras


def test_centre_ray_points_at_origin():
    cams = orbit_cameras(torch.tensor([0.0, 30.0, -10.0, 89.0]), torch.tensor([0.0, 90.0, -135.0, 10.0]), 1.8, 45.0, 33)
    origins, directions = cams.rays()
    assert origins.shape == directions.shape == (4, 33, 33, 3)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4, 33, 33))
    torch.testing.assert_close(directions[:, 16, 16], -cams.view_directions(), atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.positions.norm(dim=-1), torch.full((4,), 1.8))


def test_orbit_convention_and_image_orientation():
    cams = orbit_cameras(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), 2.0, 50.0, 8)
    torch.testing.assert_close(cams.positions, torch.tensor([[0.0, 0, 2], [2, 0, 0]]), atol=1e-6, rtol=0)
    _, d = cams.rays()
    assert d[0, 0, 0, 1] > 0 and d[0, -1, 0, 1] < 0  # row 0 looks up (+y)
    assert d[0, 0, 0, 0] < 0 and d[0, 0, -1, 0] > 0  # front camera: column 0 looks to -x
    torch.testing.assert_close(cams.elevation_azimuth(), torch.tensor([[0.0, 0.0], [0.0, 90.0]]), atol=1e-4, rtol=0)


def test_view_bin_known_directions():
    directions = torch.tensor([[0, 0, 1.0], [1, 0, 0], [-1, 0.2, 0], [0, 0, -1], [0.1, 1, 0.1], [0.5, 0.1, 0.6]])
    assert view_bin(directions) == ["front", "side", "side", "back", "overhead", "front"]


def test_camera_sampling_in_range_and_seeded():
    sampling = CameraSampling()
    cams = sampling.sample(64, 16, torch.Generator().manual_seed(0))
    again = sampling.sample(64, 16, torch.Generator().manual_seed(0))
    assert isinstance(cams, Cameras) and len(cams) == 64 and cams.height == cams.width == 16
    torch.testing.assert_close(cams.c2w, again.c2w)
    distance, elev_az = cams.positions.norm(dim=-1), cams.elevation_azimuth()
    assert distance.min() >= 1.5 - 1e-5 and distance.max() <= 2.0 + 1e-5
    assert elev_az[:, 0].min() >= -10 - 1e-3 and elev_az[:, 0].max() <= 45 + 1e-3
    assert torch.rad2deg(cams.fovy).min() >= 40 - 1e-4 and torch.rad2deg(cams.fovy).max() <= 70 + 1e-4
    with pytest.raises(ValueError, match="lo <= hi"):
        CameraSampling(distance=(2.0, 1.0))


def test_held_out_and_turntable_cameras():
    held = held_out_cameras(8, 32).elevation_azimuth()
    assert torch.all(held[:, 1].remainder(30).sub(15).abs() > 1)  # off the 30-degree exemplar azimuths
    assert set(held[:, 0].round().tolist()) == {10.0, 30.0}
    torch.testing.assert_close(held_out_cameras(8, 32).c2w, held_out_cameras(8, 32).c2w)
    table = torch.deg2rad(turntable_cameras(4, size=16).elevation_azimuth()[:, 1])
    expected = torch.deg2rad(torch.tensor([0.0, 90.0, 180.0, 270.0]))
    torch.testing.assert_close(_on_circle(table), _on_circle(expected), atol=1e-5, rtol=0)


def _on_circle(angle: torch.Tensor) -> torch.Tensor:
    """Angles as points on the unit circle, so that 180 and -180 degrees compare equal."""
    return torch.stack([angle.cos(), angle.sin()])


# ---------------------------------------------------------------- catalog and prompts


def test_parse_round_trips_every_object():
    objects = all_catalog_objects()
    assert {o.shape for o in objects} == set(SHAPES) and len(SHAPES) >= 6
    assert {o.color for o in objects} == set(COLORS) and len(COLORS) >= 8
    assert {o.pattern for o in objects} == set(PATTERNS) == {"plain", "stripes", "checker", "dots"}
    for obj in objects:
        assert parse_prompt(obj.prompt) == obj
        assert parse_prompt(obj.prompt.upper() + ".") == obj


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red cube with white stripes", CatalogObject("cube", "red", "stripes", "white")),
        ("A red striped cube", CatalogObject("cube", "red", "stripes", "white")),
        ("an orange torus with black stripe", CatalogObject("torus", "orange", "stripes", "black")),
        ("a white sphere with dots", CatalogObject("sphere", "white", "dots", "black")),
        ("green checkered cylinders", CatalogObject("cylinder", "green", "checker", "white")),
        ("a blue pyramid and yellow polka dots", CatalogObject("pyramid", "blue", "dots", "yellow")),
        ("a purple capsule", CatalogObject("capsule", "purple")),
    ],
)
def test_parse_tolerant_forms(text, expected):
    assert parse_prompt(text) == expected


def test_canonical_prompts():
    assert CatalogObject("cube", "red", "stripes").prompt == "a red cube with white stripes"
    assert CatalogObject("cube", "red", "plain", "blue").prompt == "a red cube"
    assert CatalogObject("torus", "orange", "checker", "black").prompt == "an orange torus with black checkers"


def test_unknown_word_lists_vocabulary():
    with pytest.raises(UnknownWord) as info:
        parse_prompt("a grey cube")
    message = str(info.value)
    assert "\n" not in message and "'grey'" in message
    for word in [*SHAPES, *COLORS, "stripes", "dots"]:
        assert word in message
    assert isinstance(info.value, ValueError)
    assert set(vocabulary()) >= {"shapes", "colors", "patterns"}


BAD_PROMPTS = ["", "   ", "a red", "a red cube sphere", "a red cube with blue", "a red cube striped dotted"]


@pytest.mark.parametrize("text", BAD_PROMPTS)
def test_bad_prompts_raise_clearly(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


def test_catalog_objects_deterministic_subset():
    assert catalog_objects(seed=3, n=10) == catalog_objects(seed=3, n=10)
    assert catalog_objects(seed=3, n=10) != catalog_objects(seed=4, n=10)
    assert len(set(catalog_objects(n=50))) == 50
    assert sorted(catalog_objects(), key=lambda o: o.prompt) == sorted(all_catalog_objects(), key=lambda o: o.prompt)


# ---------------------------------------------------------------- ground truth renders


def test_renders_deterministic_and_well_formed():
    obj = CatalogObject("torus", "blue", "checker")
    cams = held_out_cameras(2, 24)
    a, b = render_ground_truth(obj, cams), render_ground_truth(obj, cams)
    for name in ("rgb", "mask", "normals", "depth"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.rgb.shape == (2, 3, 24, 24) and a.mask.shape == a.depth.shape == (2, 1, 24, 24)
    assert a.rgb.min() >= 0 and a.rgb.max() <= 1
    assert torch.all(a.rgb[(a.mask == 0).expand_as(a.rgb)] == 1)  # white background
    assert set(a.mask.unique().tolist()) <= {0.0, 1.0}
    assert (a.depth[a.mask > 0] > 1.0).all() and (a.depth[a.mask > 0] < 2.5).all()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_visible_centred_and_whole(shape):
    obj = CatalogObject(shape, "red", "stripes")
    mask = render_ground_truth(obj, FRONT).mask[0, 0]
    assert mask.sum() > 100
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert abs(cols.float().mean() - 23.5) < 2 and abs(rows.float().mean() - 23.5) < 6
    # the tightest sampled camera (distance 1.5, fovy 40) still sees the whole object
    tight = orbit_cameras(torch.tensor([-10.0, 45.0, 20.0]), torch.tensor([0.0, 45.0, 130.0]), 1.5, 40.0, 32)
    edge = render_ground_truth(obj, tight).mask[:, 0]
    assert edge[:, [0, -1], :].sum() == 0 and edge[:, :, [0, -1]].sum() == 0


def test_stripes_show_two_colors():
    render = render_ground_truth(CatalogObject("cube", "red", "stripes", "white"), FRONT)
    pixels = render.rgb[0].permute(1, 2, 0)[render.mask[0, 0] > 0]
    red = (pixels[:, 0] > 0.45) & (pixels[:, 1] < 0.2)
    white = pixels.min(dim=1).values > 0.5
    assert red.sum() > 50 and white.sum() > 50
    plain = render_ground_truth(CatalogObject("cube", "red"), FRONT)
    assert (plain.rgb[0].permute(1, 2, 0)[plain.mask[0, 0] > 0].min(dim=1).values > 0.5).sum() == 0


def test_normals_unit_on_mask_and_facing_camera():
    cams = held_out_cameras(3, 32)
    for shape in ("cube", "cone", "torus"):
        render = render_ground_truth(CatalogObject(shape, "green"), cams)
        on = (render.mask > 0).expand_as(render.normals)
        n = render.normals.permute(0, 2, 3, 1)[on.permute(0, 2, 3, 1)].reshape(-1, 3)
        torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4, rtol=0)
        _, directions = cams.rays()
        facing = (render.normals.permute(0, 2, 3, 1) * directions).sum(-1)[render.mask[:, 0] > 0]
        assert (facing < 0.05).float().mean() > 0.98  # visible surfaces face the camera


def test_sphere_mask_area_matches_projected_disk():
    size, distance, fovy = 64, 1.75, 50.0
    cams = orbit_cameras(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 100.0]), distance, fovy, size)
    mask = render_ground_truth(CatalogObject("sphere", "blue"), cams, supersample=2).mask
    # the silhouette of a sphere of radius r at distance d spans tan(asin(r / d)) on the image plane
    radius_px = math.tan(math.asin(0.45 / distance)) / math.tan(math.radians(fovy) / 2) * size / 2
    expected = math.pi * radius_px**2
    torch.testing.assert_close(mask.sum(dim=(1, 2, 3)), torch.full((2,), expected), rtol=0.02, atol=0)
    assert ((mask > 0) & (mask < 1)).any()  # supersampling gives fractional edges
