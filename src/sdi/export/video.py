"""Turntable videos: MP4 (H.264, yuv420p, via imageio's ffmpeg plugin) and looping GIF, written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from sdi.io import PathLike, atomic_path, atomic_write_bytes


def stack_frames(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Frames as one uint8 array (N,H,W,3); raises on other dtypes, shapes or an empty sequence."""
    arr = np.stack([np.asarray(f) for f in frames]) if not isinstance(frames, np.ndarray) else frames
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be a non-empty (N,H,W,3) stack, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}; convert with sdi.io.to_uint8")
    return arr


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column so H and W are even (yuv420p halves both for its chroma planes)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: PathLike, frames: np.ndarray, fps: float) -> Path:
    """H.264 MP4 of uint8 frames (N,H,W,3), padded to even size, written atomically."""
    frames = pad_to_even(frames)
    with atomic_path(path) as tmp:
        # macro_block_size=2: sizes are already even, so imageio must not resize to multiples of 16.
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
            macro_block_size=2, quality=8, ffmpeg_log_level="error",
        )  # fmt: skip
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)


def write_gif(path: PathLike, frames: np.ndarray, fps: float) -> Path:
    """Looping GIF (loop=0: forever) of uint8 frames (N,H,W,3), written atomically.

    Pillow merges consecutive identical frames into one longer frame, so a static turntable has
    fewer GIF frames than inputs; the total duration is kept.
    """
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    duration_ms = max(int(round(1000.0 / fps)), 20)  # browsers play delays under 20 ms as 100 ms
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return atomic_write_bytes(path, buf.getvalue())


def save_turntable(
    frames: Sequence[np.ndarray] | np.ndarray, out_dir: PathLike, stem: str = "turntable", fps: float = 24.0
) -> dict[str, Path]:
    """Write ``<stem>.mp4`` and ``<stem>.gif`` from uint8 frames (N,H,W,3); returns {"mp4", "gif"} -> path."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arr = stack_frames(frames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "mp4": write_mp4(out / f"{stem}.mp4", arr, fps),
        "gif": write_gif(out / f"{stem}.gif", arr, fps),
    }
