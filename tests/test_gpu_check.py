"""benchmarks/gpu_check.sh --tiny runs on the CPU and writes its JSON with every field present (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check_summary as summary  # noqa: E402

PRESETS = "sds-threestudio,sdi-paper,sdi-reference"
"""The GPU run's presets (benchmarks/gpu_check.sh's default)."""


def assert_every_field(data: dict, presets: list[str]) -> None:
    assert {"schema", "command", "tiny", "wall_s", "environment", "parts", "speed", "generate", "hashgrid"} <= set(data)
    assert set(data["environment"]) == set(summary.ENVIRONMENT_FIELDS)
    assert set(data["parts"]) == set(summary.PARTS)
    rows = data["speed"]["rows"]
    assert [(r["preset"], r["unet"]) for r in rows] == [(p, m) for m in ("eager", "compiled") for p in presets]
    assert all(set(r) == set(summary.SPEED_FIELDS) for r in rows)
    assert set(data["generate"]) == set(summary.GENERATE_FIELDS)
    assert set(data["generate"]["stages_s_per_step"]) == set(summary.STAGES)
    assert [r["variant"] for r in data["hashgrid"]["rows"]] == list(summary.HASHGRID_VARIANTS)
    assert all(set(r) == set(summary.HASHGRID_FIELDS) for r in data["hashgrid"]["rows"])


def test_summary_of_nothing_still_has_every_field(tmp_path):
    data = summary.summarise(tmp_path, "benchmarks/gpu_check.sh", False, PRESETS.split(","), None)
    assert_every_field(data, PRESETS.split(","))
    assert data["generate"]["error"] == "not run" and all(r["error"] for r in data["speed"]["rows"])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(data, default=str))
    assert "(b) sdi generate" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_the_cpu_and_measures_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--presets", PRESETS,
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md", "parts.tar.gz"]  # <= 8
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert_every_field(data, PRESETS.split(","))
    assert data["tiny"] and all(p["rc"] == 0 for p in data["parts"].values()), data["parts"]
    eager = [r for r in data["speed"]["rows"] if r["unet"] == "eager"]
    assert all(r["error"] is None and r["s_per_iteration"] > 0 and r["unet_calls_per_iteration"] >= 1 for r in eager)
    assert all("CUDA only" in r["error"] for r in data["speed"]["rows"] if r["unet"] == "compiled")
    generate = data["generate"]
    assert generate["error"] is None and generate["steps"] == 3 and generate["s_per_step"] > 0
    assert all(v is not None for v in generate["stages_s_per_step"].values())
    assert generate["syncs_in_one_step"]["count"] > 0 and generate["samples_per_view"]["evaluated"] > 0
    rows = {r["variant"]: r for r in data["hashgrid"]["rows"]}
    assert all(rows[v]["points_per_s"] > 0 for v in ("autograd", "fused", "compiled"))
    assert "CUDA" in rows["tcnn"]["error"]
    assert "| sdi-paper | eager |" in (tmp_path / "gpu_check.md").read_text()
