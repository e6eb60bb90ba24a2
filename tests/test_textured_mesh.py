"""Textured meshes: UV scan, gutter fill, and GLB / OBJ+MTL whose baked texture is the field's albedo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from sdi.export.mesh import decimate, extract_mesh, save_textured_mesh, textured_mesh
from sdi.export.options import MeshOptions, default_texture_size
from sdi.export.texture import fill_gutters, rasterize_uv, scan_triangles
from sdi.scene.catalog import parse_prompt
from sdi.scene.fields import DensityConfig, GridField, GridFieldConfig

# ------------------------------------------------------------------------------------ scanning


def test_two_triangles_of_a_square_cover_every_texel_once():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    texel, face, bary = rasterize_uv(uv, faces, 8)
    assert set(texel.tolist()) == set(range(64))  # no texel missed
    diagonal = texel.bincount(minlength=64) == 2  # centres on the shared edge belong to both triangles
    assert diagonal.sum() == 8 and all(diagonal.view(8, 8)[i, 7 - i] for i in range(8))
    assert torch.allclose(bary.sum(-1), torch.ones(len(bary)))
    corners = torch.tensor([[-0.5, 7.5], [7.5, 7.5], [7.5, -0.5], [-0.5, -0.5]])  # (column, row); row 0 is v = 1
    centres = (bary[..., None] * corners[faces[face]]).sum(1)
    np.testing.assert_allclose(centres[:, 1] * 8 + centres[:, 0], texel.float(), atol=1e-4)


def test_scan_keeps_only_pixels_inside_a_triangle():
    corners = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])  # x + y <= 4
    pixel, face, _ = scan_triangles(corners, 6, 6)
    inside = {r * 6 + c for r in range(6) for c in range(6) if r + c <= 4}
    assert set(pixel.tolist()) == inside and (face == 0).all()


def test_scan_clips_to_the_image_and_skips_degenerate_triangles():
    corners = torch.tensor([[[-5.0, -5.0], [20.0, -5.0], [-5.0, 20.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    pixel, face, _ = scan_triangles(corners, 4, 4)
    assert set(pixel[face == 0].tolist()) == set(range(16))
    assert torch.isfinite(_).all()


def test_gutters_take_the_nearest_covered_texel():
    image = np.zeros((4, 4, 3), np.uint8)
    covered = np.zeros((4, 4), bool)
    image[0, 0], covered[0, 0] = (255, 0, 0), True
    image[3, 3], covered[3, 3] = (0, 0, 255), True
    filled = fill_gutters(image, covered)
    assert (filled[0, 1] == (255, 0, 0)).all() and (filled[3, 2] == (0, 0, 255)).all()
    assert (filled[covered] == image[covered]).all()


def test_texture_size_by_device_and_option_errors():
    assert default_texture_size("cpu") == 512 and default_texture_size("cuda") == 2048
    with pytest.raises(ValueError, match="--texture-size"):
        MeshOptions(texture_size=8)
    with pytest.raises(ValueError, match="--faces"):
        MeshOptions(max_faces=2)
    assert MeshOptions().max_faces == 10_000 and MeshOptions(max_faces=0).max_faces == 0


# --------------------------------------------------------------------- a catalog object's field


def catalog_field(prompt: str, resolution: int = 64) -> GridField:
    """A dense grid field holding a catalog object exactly at its voxels: density logits -200 sdf
    (a surface about one voxel thick), albedo logits of the object's painted albedo."""
    obj = parse_prompt(prompt)
    field = GridField(GridFieldConfig(resolution=resolution, density=DensityConfig(blob_scale=0.0)))
    axis = torch.linspace(-1, 1, resolution)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # grid_sample reads (x, y, z) from (W, H, D)
    points = torch.stack([x, y, z], -1).view(-1, 3)
    with torch.no_grad():
        field.grid[0, 0] = ((-200 * obj.sdf(points)).clamp(-20, 20) + 1).view(x.shape)
        field.grid[0, 1:] = torch.logit(obj.albedo(points).clamp(0.01, 0.99)).t().reshape(3, *x.shape)
    return field.eval()


def albedo_fn(field):
    return lambda points: field(points).albedo


def sample_texture(mesh: trimesh.Trimesh, points: np.ndarray, faces: np.ndarray) -> torch.Tensor:
    """The texture's colour (N, 3) at surface points on ``faces``, bilinear with texel centres at (i + 0.5) / size
    (glTF / OpenGL sampling), UV interpolated barycentrically."""
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points)
    uv = torch.from_numpy((bary[..., None] * mesh.visual.uv[mesh.faces[faces]]).sum(1)).float()
    image = mesh.visual.material.baseColorTexture if hasattr(mesh.visual.material, "baseColorTexture") \
        else mesh.visual.material.image
    texture = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], -1)[None, None]
    return torch.nn.functional.grid_sample(texture, grid, align_corners=False, padding_mode="border")[0, :, 0].t()


def texture_error(mesh: trimesh.Trimesh, field: GridField, n: int = 20_000, flip_v: bool = False) -> float:
    """Mean |texture - field albedo| over ``n`` random surface points of ``mesh`` (``flip_v``: read the texture
    upside down, a control that must miss)."""
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=0)
    if flip_v:
        mesh = mesh.copy()
        mesh.visual.uv[:, 1] = 1 - mesh.visual.uv[:, 1]
    with torch.no_grad():
        albedo = field(torch.from_numpy(points).float()).albedo
    return (sample_texture(mesh, points, faces) - albedo).abs().mean().item()


@pytest.fixture(scope="module", params=["a red cube with white stripes", "a blue sphere with yellow dots"])
def exported(request, tmp_path_factory):
    """A catalog field meshed at 96^3, its albedo baked at 512 px, written as GLB / OBJ+MTL / PLY."""
    field = catalog_field(request.param)
    mesh = extract_mesh(field.density, albedo_fn(field), resolution=96)
    paths = save_textured_mesh(mesh, textured_mesh(mesh, albedo_fn(field), 512), tmp_path_factory.mktemp("mesh"))
    return field, mesh, paths


def test_glb_has_a_uv_atlas_and_a_base_color_texture(exported):
    _, mesh, paths = exported
    glb = trimesh.load(paths["glb"], force="mesh", process=False)
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals)
    assert glb.visual.uv.shape == (len(glb.vertices), 2)
    assert glb.visual.uv.min() >= 0 and glb.visual.uv.max() <= 1
    texture = glb.visual.material.baseColorTexture
    assert isinstance(texture, Image.Image) and texture.size == (512, 512)
    assert len(glb.faces) == len(mesh.faces) and glb.area == pytest.approx(mesh.area, rel=1e-5)


def test_baked_texture_matches_the_field_albedo_on_the_surface(exported):
    field, _, paths = exported
    glb = trimesh.load(paths["glb"], force="mesh", process=False)
    error, upside_down = texture_error(glb, field), texture_error(glb, field, flip_v=True)
    print(f"mean |GLB texture - field albedo| = {error:.4f} (read upside down: {upside_down:.3f})")
    assert error < 0.03 < upside_down


def test_obj_and_mtl_load_with_their_texture(exported):
    field, mesh, paths = exported
    assert f"map_Kd {paths['png'].name}" in paths["mtl"].read_text()
    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals)
    assert obj.visual.material.image.size == (512, 512)
    assert len(obj.faces) == len(mesh.faces)
    assert texture_error(obj, field) < 0.03


def test_ply_keeps_vertex_colours(exported):
    _, mesh, paths = exported
    ply = trimesh.load(paths["ply"], force="mesh", process=False)
    assert len(ply.vertices) == len(mesh.vertices)
    np.testing.assert_array_equal(ply.visual.vertex_colors, mesh.visual.vertex_colors)


def test_decimated_mesh_keeps_its_texture(tmp_path):
    field = catalog_field("a red cube with white stripes")
    full = extract_mesh(field.density, albedo_fn(field), resolution=96)
    mesh = decimate(full, 2000)
    assert 1000 < len(mesh.faces) <= 2000 < len(full.faces) and decimate(mesh, 2000) is mesh
    assert mesh.metadata["iso_level"] == full.metadata["iso_level"] > 0  # chosen automatically, reported
    paths = save_textured_mesh(full, textured_mesh(mesh, albedo_fn(field), 256), tmp_path)
    glb = trimesh.load(paths["glb"], force="mesh", process=False)
    assert len(glb.faces) == len(mesh.faces) and texture_error(glb, field) < 0.03
    assert len(trimesh.load(paths["ply"], force="mesh", process=False).faces) == len(full.faces)
