"""Atomic writes, checkpoints (bit-identical Adam resume, corrupt files), mesh and video export."""

from __future__ import annotations

import math

import json
import os

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from torch import nn

from sdi.export.mesh import EmptyVolumeError, auto_threshold, extract_mesh, save_mesh
from sdi.export.video import save_turntable
from sdi.io import (all_or_nothing, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text,
                    image_grid, save_image)
from sdi.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    module_state,
    pack_training_state,
    restore_training_state,
    save_checkpoint,
)

# ---------------------------------------------------------------------------------------- io


def test_atomic_writes_round_trip(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a.txt", "héllo")
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2.5], "a": None})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2.5], "a": None}
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.json", "a.txt"]  # no temporary files left


def test_atomic_path_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json"
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")


def test_json_is_always_valid_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "x": [1.5, float("inf"), {"y": -float("inf")}]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {"loss": None,
                                                                                        "x": [1.5, None, {"y": None}]}


def test_all_or_nothing_replaces_a_group_of_files_together(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with all_or_nothing():
            atomic_write_text(tmp_path / "a.txt", "new")
            assert (tmp_path / "a.txt").read_text() == "old"  # held back until the block ends
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"] and (tmp_path / "a.txt").read_text() == "old"
    with all_or_nothing() as written:
        atomic_write_text(tmp_path / "a.txt", "new")
        atomic_write_text(tmp_path / "b.txt", "new")
    assert written == [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


def test_a_full_disk_names_the_file_and_the_room_it_needed(tmp_path, monkeypatch):
    import errno

    import sdi.io
    from sdi.errors import WriteError

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sdi.io, "_fsync_file", full)
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(WriteError) as error:
        atomic_write_bytes(tmp_path / "a.bin", b"\0" * 3000)
    assert str(error.value).startswith(f"no room to write {tmp_path / 'a.bin'}: it needs 2.9 KiB, ")
    assert "free on its disk; files written before are intact" in str(error.value)
    assert (tmp_path / "a.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_save_image_and_grid(tmp_path):
    img = torch.rand(3, 5, 7)
    save_image(tmp_path / "a.png", img)
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    save_image(tmp_path / "b.png", back)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), back)

    batch = torch.zeros(5, 3, 4, 6)
    batch[3] = 1.0  # fourth image white: row 1, column 0 in a 3-wide grid
    grid = image_grid(batch, nrow=3)
    assert grid.shape == (8, 18, 3) and grid.dtype == np.uint8
    assert (grid[4:8, 0:6] == 255).all() and grid.sum() == 255 * 4 * 6 * 3


# -------------------------------------------------------------------------------- checkpoint


def _make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    gen = torch.Generator().manual_seed(123)
    return model, opt, gen


def _train(model, opt, gen, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)  # the data stream depends on the generator state
        loss = (model(x) - x[:, :2].sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adam_resume_is_bit_identical(tmp_path):
    ref_model, ref_opt, ref_gen = _make_run()
    _train(ref_model, ref_opt, ref_gen, 7)

    model, opt, gen = _make_run()
    _train(model, opt, gen, 4)
    tensors, meta = pack_training_state({"net": model}, {"adam": opt}, gen, step=4, extra_meta={"cfg": "x"})
    save_checkpoint(tmp_path / "ckpt.safetensors", tensors, meta)

    model2, opt2, gen2 = _make_run(seed=99)  # different init: everything must come from the file
    tensors2, meta2 = load_checkpoint(tmp_path / "ckpt.safetensors")
    step = restore_training_state(tensors2, meta2, {"net": model2}, {"adam": opt2}, gen2)
    assert step == 4 and meta2["extra"] == {"cfg": "x"}
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    _train(model2, opt2, gen2, 3)
    for a, b in zip(ref_model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_keeps_dtypes(tmp_path):
    state = {"a": torch.arange(6, dtype=torch.int64).reshape(2, 3), "b": torch.tensor(2.5), "c": torch.ones(2).bool()}
    save_checkpoint(tmp_path / "c.safetensors", state, {"k": [1, "two"]})
    back, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta == {"k": [1, "two"]}
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_restore_into_wrong_model_raises(tmp_path):
    model, opt, gen = _make_run()
    tensors, meta = pack_training_state({"net": model}, {"adam": opt}, gen, step=0, extra_meta=None)
    other = nn.Linear(4, 2)
    other_opt = torch.optim.Adam(other.parameters())
    with pytest.raises(CheckpointError, match="does not match"):
        restore_training_state(tensors, meta, {"net": other}, {"adam": other_opt}, None)
    with pytest.raises(CheckpointError, match="holds optimizers"):
        restore_training_state(tensors, meta, {"net": model}, {}, None)
    assert module_state(tensors, "net").keys() == model.state_dict().keys()


@pytest.fixture
def good_ckpt(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": torch.randn(64, 64)}, {"step": 3})
    return path


def test_truncated_checkpoint_raises(good_ckpt):
    data = good_ckpt.read_bytes()
    good_ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*delete"):
        load_checkpoint(good_ckpt)


def test_random_bytes_checkpoint_raises(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(path)


def test_flipped_data_byte_raises(good_ckpt):
    data = bytearray(good_ckpt.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: the header still parses
    good_ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(good_ckpt)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------- mesh

RADIUS = 0.5


def _sphere_density(p: torch.Tensor) -> torch.Tensor:
    """A density blob: 50 inside a sphere of radius 0.5, falling to 0 over a shell ~0.05 thick."""
    return 50.0 * torch.sigmoid((RADIUS - p.norm(dim=-1)) / 0.01)


def _position_color(p: torch.Tensor) -> torch.Tensor:
    return (p * 0.5 + 0.5).clamp(0, 1)


def test_sphere_mesh_round_trips_through_glb_obj_ply(tmp_path):
    mesh = extract_mesh(_sphere_density, _position_color, resolution=48, chunk=10_000)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.vertices) > 0 and abs(radii.mean() - RADIUS) < 0.03 * RADIUS
    assert mesh.is_watertight and mesh.volume > 0  # closed, normals outward
    paths = save_mesh(mesh, tmp_path / "out", stem="sphere")
    assert set(paths) == {"glb", "obj", "ply"}
    for kind, path in paths.items():
        back = trimesh.load(path, force="mesh", process=False)
        assert len(back.vertices) == len(mesh.vertices), kind
        assert abs(np.linalg.norm(back.vertices, axis=1).mean() - RADIUS) < 0.03 * RADIUS, kind
        colors = np.asarray(back.visual.vertex_colors, dtype=int)
        assert np.abs(colors - mesh.visual.vertex_colors.astype(int)).max() <= 1, kind


def test_auto_threshold_sits_between_modes():
    density = np.concatenate([np.full(900, 0.01), np.full(100, 40.0)])
    assert auto_threshold(density) == pytest.approx(20.005)
    assert auto_threshold(density, voxel=0.01) == pytest.approx(20.005)  # ln 2 / 0.01 = 69 lies above the midpoint
    assert auto_threshold(density, voxel=0.1) == pytest.approx(math.log(2) / 0.1)  # a voxel at 6.9 is half opaque


def test_surface_touching_the_box_is_closed():
    mesh = extract_mesh(lambda p: 20.0 * (p.norm(dim=-1) < 1.2).float(), None, resolution=24)
    assert mesh.is_watertight


def test_empty_volume_raises():
    with pytest.raises(EmptyVolumeError, match="empty volume"):
        extract_mesh(lambda p: torch.zeros(len(p)), None, resolution=16)
    with pytest.raises(EmptyVolumeError, match="empty volume"):
        extract_mesh(_sphere_density, None, resolution=16, threshold=1000.0)


# ------------------------------------------------------------------------------------ video


def test_turntable_mp4_and_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    paths = save_turntable(list(frames), tmp_path, fps=10)
    reader = imageio.get_reader(paths["mp4"])
    mp4 = [f for f in reader]
    reader.close()
    assert len(mp4) == 10 and mp4[0].shape == (64, 64, 3)
    gif = Image.open(paths["gif"])
    assert gif.n_frames == 10 and gif.info["loop"] == 0
    assert sorted(os.listdir(tmp_path)) == ["turntable.gif", "turntable.mp4"]


def test_turntable_odd_size_is_padded(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, 33, 21, 3), dtype=np.uint8)
    paths = save_turntable(frames, tmp_path, stem="odd", fps=5)
    reader = imageio.get_reader(paths["mp4"])
    assert reader.get_data(0).shape == (34, 22, 3)
    reader.close()


def test_turntable_rejects_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_turntable(np.zeros((2, 8, 8, 3), dtype=np.float32), tmp_path)
