"""Exports of a trained run: turntable video, views grid, mesh. Redone by ``sdi export RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

import torch

from sdi.export.figures import figure
from sdi.export.mesh import EmptyVolumeError, decimate, extract_mesh, save_textured_mesh, textured_mesh
from sdi.export.options import MeshOptions, default_texture_size
from sdi.export.video import save_turntable
from sdi.io import save_image, to_uint8
from sdi.scene.fields import GridFieldConfig
from sdi.scene.cameras import held_out_cameras, turntable_cameras
from sdi.scene.renderer import render
from sdi.train.loop import Scene


@torch.no_grad()
def render_views(scene: Scene, cameras, num_samples: int = 64, normals: bool = False):
    """Deterministic renders (no jitter) of ``cameras``, on the scene's device."""
    return render(scene.field, scene.background, cameras.to(scene.device), num_samples, "albedo", None, None, None,
                  chunk=8192, normals="auto" if normals else None, perturb=False, bound=scene.bound)


def export_turntable(scene: Scene, out_dir: Path, size: int, frames: int = 36) -> dict[str, Path]:
    """A 360 degree turntable at elevation 15, MP4 and GIF."""
    out = render_views(scene, turntable_cameras(frames, size=size))
    return save_turntable(to_uint8(out.rgb), out_dir, fps=12)


def export_views(scene: Scene, out_dir: Path, size: int) -> Path:
    """rgb, normals and opacity at the 8 held-out cameras, one row each."""
    with torch.enable_grad():  # normals come from the density's gradient
        out = render(scene.field, scene.background, held_out_cameras(8, size).to(scene.device), 64, "albedo", None,
                     None, None, chunk=8192, normals="auto", perturb=False, bound=scene.bound)
    normals = (torch.nn.functional.normalize(out.normals, dim=1) * 0.5 + 0.5) * out.opacity
    rows = torch.cat([out.rgb, normals, out.opacity.expand(-1, 3, -1, -1)]).detach().cpu()
    return save_image(out_dir / "views.png", figure(rows, nrow=8, scale=2))


def field_voxel(field) -> float | None:
    """The voxel size of a dense grid field (None for other fields)."""
    cfg = getattr(field, "cfg", None)
    return 2.0 * cfg.bound / (cfg.resolution - 1) if isinstance(cfg, GridFieldConfig) else None


def export_mesh(scene: Scene, out_dir: Path, options: MeshOptions = MeshOptions()) -> dict:
    """GLB and OBJ with a baked albedo texture (decimated to the face budget), PLY with vertex colours (the full
    marching-cubes mesh); the iso level, face counts and texture size used; {"skipped": reason} for an empty volume."""
    field = scene.field
    albedo = lambda points: field(points).albedo  # noqa: E731
    try:
        mesh = extract_mesh(field.density, albedo, resolution=options.resolution, bound=scene.bound,
                            device=scene.device, voxel=field_voxel(field))
    except EmptyVolumeError as error:
        return {"skipped": str(error)}
    low = decimate(mesh, options.max_faces) if options.max_faces else mesh
    size = options.texture_size or default_texture_size(scene.device)
    paths = save_textured_mesh(mesh, textured_mesh(low, albedo, size, scene.device), out_dir)
    return {**{kind: str(path) for kind, path in paths.items()}, "iso_level": mesh.metadata["iso_level"],
            "faces": len(low.faces), "ply_faces": len(mesh.faces), "texture_size": size}


def export_run(scene: Scene, out_dir: Path, size: int, mesh: MeshOptions = MeshOptions()) -> dict:
    """All exports; returns what was written (or why not) for metrics.json."""
    scene.field.eval()
    paths = {"turntable": export_turntable(scene, out_dir, size), "views": export_views(scene, out_dir, size)}
    written = {k: ({kk: str(vv) for kk, vv in v.items()} if isinstance(v, dict) else str(v)) for k, v in paths.items()}
    return {**written, "mesh": export_mesh(scene, out_dir, mesh)}
