"""The runs folder as the page lists it: every subfolder with a config.json, newest first, and its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdi.run_folder import read_json

DOWNLOADS = ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply", "turntable.mp4", "turntable.gif",
             "views.png", "metrics.json", "config.json")
"""The files of a run offered for download, in this order (those that exist)."""


@dataclass(frozen=True)
class RunSummary:
    """One run folder as listed on the page."""

    name: str
    path: Path
    prompt: str
    preset: str
    prior: str
    steps: int | None
    """Steps trained, from metrics.json; None while training or when it was killed."""
    modified: float


def list_runs(root: Path) -> list[RunSummary]:
    """Run folders directly under ``root`` (those with a readable config.json), most recently changed first."""
    if not root.is_dir():
        return []
    runs = []
    for folder in root.iterdir():
        run = read_json(folder / "config.json").get("run") if folder.is_dir() else None
        if not isinstance(run, dict):
            continue
        steps = read_json(folder / "metrics.json").get("steps")
        modified = max(p.stat().st_mtime for p in (folder, folder / "config.json"))
        runs.append(RunSummary(folder.name, folder, str(run.get("prompt", "")), str(run.get("preset", "")),
                               str(run.get("prior", "")), steps, modified))
    return sorted(runs, key=lambda r: r.modified, reverse=True)


def run_files(run_dir: Path) -> dict[str, Path | list[Path] | None]:
    """The outputs the page shows: turntable GIF, GLB, views, and the downloadable files that exist."""
    existing = lambda name: run_dir / name if (run_dir / name).is_file() else None  # noqa: E731
    return {"turntable": existing("turntable.gif"), "glb": existing("mesh.glb"), "views": existing("views.png"),
            "downloads": [run_dir / name for name in DOWNLOADS if (run_dir / name).is_file()]}
