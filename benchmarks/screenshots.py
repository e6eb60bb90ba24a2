"""The README's pictures of issue 11: the `sdi serve` page after a finished run, and the run's textured GLB (as read
back from the file) next to the field's own render from the same cameras.

Starts `sdi serve` over RUNS, types PROMPT into the page in headless Chromium, waits for the run (the default
`fast` preset: 300 steps), saves the page, then renders the GLB by projecting its triangles (z-buffer, texture
read bilinearly at the interpolated UV, no lighting) and the field by volume rendering (albedo, no lighting).
Prints the mean |mesh - field| over pixels both cover, and the IoU of their silhouettes.

    python benchmarks/screenshots.py --out docs/screenshots
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from sdi.export.figures import figure
from sdi.export.run_outputs import render_views
from sdi.export.texture import scan_triangles
from sdi.io import save_image
from sdi.scene.cameras import Cameras, orbit_cameras
from sdi.train.run import read_config, restore_state
from sdi.web import testing


def screenshot_page(runs: Path, prompt: str, out: Path, steps: str = "", timeout_s: float = 3600) -> Path:
    """Run ``prompt`` from the page and save the page once it is done; returns the run folder."""
    process, url = testing.start_server(runs, testing.free_port())
    browser = testing.Browser()
    try:
        page = testing.Page(browser, url)
        page.type("prompt", prompt)
        if steps:
            page.type("steps", steps)
        start = time.perf_counter()
        page.generate()
        done = page.wait_status(lambda text: text.startswith(("Done", "sdi ")), timeout_s, "the run")
        print(f"{done} ({time.perf_counter() - start:.0f} s from the click)")
        browser.wait(lambda d: page.drawn_fraction("#model3d canvas") > 0.02, 60, "the 3D view")
        time.sleep(2)
        browser.driver.save_screenshot(str(out / "serve.png"))
    finally:
        browser.close()
        testing.stop_server(process)
    return Path(done.split("wrote ")[1].split(";")[0])


def project(points: torch.Tensor, cameras: Cameras, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel (column, row) coordinates (N, 2), pixel centres at integers, and depth (N,) in camera ``index``."""
    c2w = cameras.c2w[index]
    rel = points - c2w[:3, 3]
    x, y, depth = rel @ c2w[:3, 0], rel @ c2w[:3, 1], -(rel @ c2w[:3, 2])
    tan = torch.tan(cameras.fovy[index] / 2)
    h, w = cameras.height, cameras.width
    col = (x / (depth * tan * w / h) + 1) * w / 2 - 0.5
    row = (1 - y / (depth * tan)) * h / 2 - 0.5
    return torch.stack([col, row], -1), depth


def render_textured(mesh: trimesh.Trimesh, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo images (B, 3, H, W) over white and coverage masks (B, 1, H, W) of a textured trimesh."""
    vertices = torch.from_numpy(np.asarray(mesh.vertices, np.float32))
    faces = torch.from_numpy(np.asarray(mesh.faces, np.int64))
    uv = torch.from_numpy(np.asarray(mesh.visual.uv, np.float32))
    texture = torch.from_numpy(np.array(mesh.visual.material.baseColorTexture.convert("RGB"))).permute(2, 0, 1)
    texture = texture[None].float() / 255
    h, w = cameras.height, cameras.width
    images, masks = [], []
    for b in range(len(cameras)):
        pixels, depth = project(vertices, cameras, b)
        pixel, face, bary = scan_triangles(pixels[faces], h, w)
        z = (bary * depth[faces[face]]).sum(-1)
        nearest = torch.full((h * w,), float("inf")).scatter_reduce(0, pixel, z, "amin")
        front = z <= nearest[pixel]
        pixel, face, bary = pixel[front], face[front], bary[front]
        texel = (bary[..., None] * uv[faces[face]]).sum(1)
        grid = torch.stack([texel[:, 0] * 2 - 1, (1 - texel[:, 1]) * 2 - 1], -1)[None, None]
        colors = torch.nn.functional.grid_sample(texture, grid, align_corners=False)[0, :, 0].t()
        image, mask = torch.ones(h * w, 3), torch.zeros(h * w, 1)
        image[pixel], mask[pixel] = colors, 1.0
        images.append(image.t().reshape(3, h, w))
        masks.append(mask.t().reshape(1, h, w))
    return torch.stack(images), torch.stack(masks)


def compare(run_dir: Path, out: Path, size: int = 256) -> None:
    """The GLB next to the field, 4 views; prints their difference where both cover a pixel."""
    config = read_config(run_dir)
    state, _ = restore_state(run_dir, config.resolved_preset(), config.seed, "cpu")
    state.scene.field.eval()
    cameras = orbit_cameras(torch.full((4,), 15.0), torch.tensor([30.0, 120.0, -150.0, -60.0]), 1.75, 50.0, size)
    field = render_views(state.scene, cameras, num_samples=128)
    glb = trimesh.load(run_dir / "mesh.glb", force="mesh", process=False)
    mesh_rgb, mesh_mask = render_textured(glb, cameras)
    field_mask = (field.opacity > 0.5).float()
    both = (mesh_mask * field_mask).bool().expand_as(mesh_rgb)
    error = (mesh_rgb - field.rgb.cpu()).abs()[both].mean().item()
    iou = ((mesh_mask * field_mask).sum() / ((mesh_mask + field_mask) > 0).sum()).item()
    rows = torch.cat([mesh_rgb, field.rgb.cpu()])
    path = save_image(out / "textured-glb-vs-field.png", figure(rows, nrow=4, labels=["GLB (top) / field (bottom)"]))
    print(f"{path}: mean |GLB - field| {error:.4f} where both cover a pixel; silhouette IoU {iou:.3f}; "
          f"{len(glb.faces)} faces, texture {glb.visual.material.baseColorTexture.size[0]} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red cube with white stripes")
    parser.add_argument("--steps", default="", help="override the preset's steps (empty: 300)")
    parser.add_argument("--runs", type=Path, default=None, help="runs folder (default: a temporary one)")
    parser.add_argument("--run", type=Path, default=None, help="only redo the comparison of this finished run")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or screenshot_page(args.runs or Path(tempfile.mkdtemp()) / "runs", args.prompt, args.out,
                                          args.steps)
    compare(run_dir, args.out)


if __name__ == "__main__":
    main()
