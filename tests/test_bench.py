"""Benchmark tooling: image metrics by hand and against scikit-image, the grid runner (subprocesses with a
SIGKILLed job, resume, Ray), the Markdown report, and CLIP score / CLIP-IQA on a tiny random CLIP."""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import json
import math
import os
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

import sdi.bench.runner as runner
from sdi import metrics
from sdi.bench.report import line_plot, publish_markdown, script_command, summarize, write_report
from sdi.bench.runner import ROW_COLUMNS, Job, read_runs, run_grid
from sdi.bench.selftest import FIX_ENV
from sdi.errors import UserError

TOY = "sdi.bench.selftest:toy_job"


def _images(b=2, h=24, w=28, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- metrics


def test_psnr_known_values():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[1] += 0.1  # MSE 0.01 -> 20 dB
    p = metrics.psnr(a, b)
    assert p[0] == math.inf
    assert p[1].item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_skimage():
    a = _images()
    b = (a + 0.15 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ours = metrics.ssim(a, b)
    for i in range(len(a)):
        ref = structural_similarity(
            a[i].permute(1, 2, 0).double().numpy(),
            b[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[..., :8, :8], b[..., :8, :8])


def test_mask_iou_known_masks():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.zeros(2, 1, 4, 4)
    a[0, :, :2, :] = 1  # 8 pixels
    b[0, :, 1:3, :] = 0.9  # 8 pixels, 4 shared -> 4 / 12
    iou = metrics.mask_iou(a, b)
    assert iou[0].item() == pytest.approx(1 / 3)
    assert iou[1].item() == 1.0  # both empty
    assert metrics.mask_iou(a, b, threshold=0.95)[0].item() == 0.0


def test_detail_ratio_and_high_frequency_energy():
    img = _images(h=32, w=32)
    blurred = metrics.gaussian_blur(img, 2.0)
    assert torch.allclose(metrics.detail_ratio(img, img), torch.ones(2))
    assert (metrics.detail_ratio(blurred, img) < 0.5).all()
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert metrics.high_frequency_energy(flat).item() == pytest.approx(0.0, abs=1e-12)


def _object_scene(seed=0):
    """Textured 32x32 images with a 16x16 object mask in the middle (pixels 8..23)."""
    img = _images(h=32, w=32, seed=seed)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    return img, mask


def test_masked_detail_ratio_ignores_everything_outside_the_mask():
    img, mask = _object_scene()
    render = img.clone()
    speckle = torch.rand(render.shape, generator=torch.Generator().manual_seed(3))
    render = torch.where(mask.bool(), render, speckle)  # floaters and speckle outside the object only
    assert torch.allclose(metrics.masked_detail_ratio(render, img, mask), torch.ones(2), atol=1e-6)
    assert (metrics.detail_ratio(render, img) != 1).all()  # the unmasked ratio counts the speckle
    blurred = torch.where(mask.bool(), metrics.gaussian_blur(img, 2.0), img)  # blur inside only
    assert (metrics.masked_detail_ratio(blurred, img, mask) < 0.5).all()
    # With less erosion than the blur radius the silhouette step leaks in (white outside vs texture inside).
    white = torch.where(mask.bool(), img, torch.ones_like(img))
    assert torch.allclose(metrics.masked_detail_ratio(white, img, mask), torch.ones(2), atol=1e-6)
    assert (metrics.masked_detail_ratio(white, img, mask, erode=1) != 1).all()


def test_masked_detail_ratio_with_a_full_mask_is_the_detail_ratio():
    img, _ = _object_scene()
    other = metrics.gaussian_blur(img, 0.7)
    full = torch.ones(2, 1, 32, 32)
    for erode in (None, 0, 2):  # the image border does not erode
        assert torch.allclose(metrics.masked_detail_ratio(other, img, full, erode=erode),
                              metrics.detail_ratio(other, img), rtol=1e-5)
    assert torch.allclose(metrics.high_frequency_energy(img, mask=full), metrics.high_frequency_energy(img))


def test_erode_mask_and_masked_validation():
    img, mask = _object_scene()
    assert torch.equal(metrics.erode_mask(mask, 0), mask)
    eroded = metrics.erode_mask(mask * 0.6, 3)  # soft masks are thresholded at 0.5 first
    assert eroded.sum().item() == 2 * 10 * 10 and eroded[..., 11:21, 11:21].all()  # 16 - 2 * 3 pixels wide
    assert metrics.masked_detail_ratio(img, img, mask, erode=8).isnan().all()  # nothing left inside
    with pytest.raises(ValueError, match=r"mask must be a \(B, 1, H, W\) mask, got \(2, 3, 32, 32\)"):
        metrics.masked_detail_ratio(img, img, img)
    with pytest.raises(ValueError, match="does not match images"):
        metrics.masked_detail_ratio(img, img, mask[..., :16])
    with pytest.raises(ValueError, match="same shape"):
        metrics.masked_detail_ratio(img, img[:1], mask)
    with pytest.raises(ValueError, match="non-negative whole number"):
        metrics.erode_mask(mask, -1)


def test_saturation_error_and_l2():
    gray = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 0.8  # saturation 1
    assert metrics.saturation_error(gray, red).item() == pytest.approx(1.0)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    half = red.clone()
    half[..., 2:] = 0.5  # unsaturated outside the mask only
    assert metrics.saturation_error(half, red, mask).item() == pytest.approx(0.0)
    assert metrics.saturation_error(half, red).item() == pytest.approx(0.5)
    assert metrics.l2_distance(gray, gray + 0.25).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same shape"):
        metrics.l2_distance(gray, red[..., :2])


# -------------------------------------------------------------------------------------------- runner


def test_job_key_is_stable_and_params_order_free():
    a = Job("2d", "sdi", "a cat", 0, {"steps": 10, "cfg": 7.5})
    b = Job("2d", "sdi", "a cat", 0, (("cfg", 7.5), ("steps", 10)))
    assert a == b and a.key == b.key and hash(a) == hash(b)
    assert a.key.startswith("2d-sdi-s0-")
    assert Job("2d", "sdi", "a cat", 1, {"steps": 10, "cfg": 7.5}).key != a.key
    with pytest.raises(TypeError, match="JSON scalars"):
        Job("2d", "sdi", "", 0, {"x": object()})


def _toy_grid() -> list[Job]:
    ok = [Job("toy", m, "a cat", s, {"scale": 2.0}) for m in ("sdi", "sds") for s in range(2)]
    return ok + [Job("toy", "sds", "a cat", 7, {"crash": "kill"}), Job("toy", "ism", "a cat", 0, {"crash": "raise"})]


def test_run_grid_records_killed_job_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv(FIX_ENV, raising=False)
    jobs = _toy_grid()
    rows = run_grid(jobs, TOY, tmp_path, workers=2, progress=False)
    assert [r["key"] for r in rows] == [j.key for j in jobs]
    status = {r["key"]: r["status"] for r in rows}
    killed, raised = jobs[-2].key, jobs[-1].key
    assert status[killed] == "failed" and "SIGKILL" in rows[-2]["error"]
    assert status[raised] == "failed" and rows[-1]["error"] == "RuntimeError: toy failure"
    assert all(r["status"] == "ok" for r in rows[:4])
    assert rows[1]["score"] == 2.0 and rows[1]["note"] == "sdi:a cat"

    with open(tmp_path / "runs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(jobs)
    assert list(table[0])[: len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    by_key = {r["key"]: r for r in table}
    assert by_key[killed]["status"] == "failed" and json.loads(by_key[killed]["params"]) == {"crash": "kill"}

    # "Fix" the killing job; resume re-runs only the failed ones (the raising job still fails).
    monkeypatch.setenv(FIX_ENV, "1")
    before = read_runs(tmp_path / "runs.csv")
    rows2 = run_grid(jobs, TOY, tmp_path, workers=2, resume=True, progress=False)
    after = read_runs(tmp_path / "runs.csv")
    assert {r["key"]: r["status"] for r in rows2}[killed] == "ok"
    for job in jobs[:4]:  # untouched: same wall time as before
        assert after[job.key]["wall_s"] == before[job.key]["wall_s"]
    assert after[raised]["status"] == "failed" and after[raised]["wall_s"] != before[raised]["wall_s"]
    assert len(after) == len(jobs)


def test_run_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="module:function"):
        run_grid([], "sdi.bench.selftest.toy_job", tmp_path)
    job = Job("toy", "sdi", "", 0)
    with pytest.raises(ValueError, match="duplicate"):
        run_grid([job, job], TOY, tmp_path)
    rows = run_grid([job], "sdi.bench.selftest:not_a_dict", tmp_path, workers=1, progress=False)
    assert rows[0]["status"] == "failed" and "dict of metrics" in rows[0]["error"]


def listening_addresses() -> list[str]:
    """Local addresses of the TCP sockets listening in this process and its descendants (Ray's GCS, raylet,
    workers and agents), read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {os.getpid()}, True
    while grew:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        grew, tree = grown != tree, grown
    inodes = set()
    for pid in tree:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                addresses.append(_address(cols[1].split(":")[0]))
    return addresses


def _address(hex_ip: str) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4, or IPv6 with its IPv4-mapped form)."""
    raw = bytes.fromhex(hex_ip)
    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def test_run_grid_ray_local_listens_on_loopback_only(tmp_path, monkeypatch):
    # Not skipped when Ray is missing: ray is a test dependency, and run_grid says `pip install 'sdi[bench]'`.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    seen, real = [], runner.write_runs
    monkeypatch.setattr(runner, "write_runs", lambda *a: seen.append(listening_addresses()) or real(*a))
    jobs = [Job("toy", "sdi", "a cat", s, {"scale": 3.0}) for s in range(2)]
    rows = run_grid(jobs, TOY, tmp_path, workers=2, ray_address="local", progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["score"] for r in rows] == [0.0, 3.0]
    assert len(read_runs(tmp_path / "runs.csv")) == 2
    listening = seen[0]  # while Ray ran a job
    assert len(listening) >= 3, listening  # GCS, raylet, the driver's core worker at least
    loopback = {"127.0.0.1", "::1"}
    assert set(listening) <= loopback, f"Ray listens beyond 127.0.0.1: {sorted(set(listening) - loopback)}"


def test_ray_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"--ray needs Ray, which is not installed: pip install 'sdi\[bench\]'"):
        run_grid([Job("toy", "sdi", "a cat", 0)], TOY, tmp_path, ray_address="local", progress=False)


def test_a_worker_imports_job_functions_from_the_fixed_list_only(tmp_path):
    (tmp_path / "evil.py").write_text("raise SystemExit('imported')\n")
    with pytest.raises(ValueError, match="job functions come from sdi.bench.suites, sdi.bench.modes, sdi.bench.selftest only"):
        run_grid([Job("toy", "sdi", "", 0)], "evil:run", tmp_path)
    # The worker takes its function from its command line, never from the spec file in the output folder.
    spec = tmp_path / "job.spec.json"
    spec.write_text(json.dumps({"job": Job("toy", "sdi", "a cat", 2).to_dict(), "job_fn": "evil:run",
                                "sys_path": [str(tmp_path)]}))
    runner._worker_main(TOY, str(spec), str(tmp_path / "result.json"))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["metrics"]["score"] == 2.0 and "evil" not in sys.modules
    runner._worker_main("evil:run", str(spec), str(tmp_path / "result.json"))
    assert "job functions come from" in json.loads((tmp_path / "result.json").read_text())["error"]
    assert "evil" not in sys.modules


# -------------------------------------------------------------------------------------------- report


def _fake_rows():
    rows = []
    for m, base in (("sds", 0.5), ("sdi", 0.8)):
        for seed in range(3):
            for steps in (3, 10):
                rows.append({
                    "key": f"{m}-{seed}-{steps}", "method": m, "seed": seed, "status": "ok", "error": "",
                    "params": json.dumps({"inv_steps": steps}), "quality": base + 0.01 * seed + 0.001 * steps,
                    "psnr": math.inf if (m, seed, steps) == ("sds", 0, 3) else 20.0 + seed,
                    "diverged": float(seed == 0 and m == "sds"),
                })
    dead = {"key": "sdi-dead", "method": "sdi", "seed": 9, "status": "failed", "error": "killed | by SIGKILL"}
    rows.append({**dead, "params": "{}"})
    return rows


def test_summarize_means_and_counts():
    s = {e["method"]: e for e in summarize(_fake_rows(), metrics=["quality", "psnr"])}
    assert s["sdi"]["runs"] == 7 and s["sdi"]["failed"] == 1 and s["sds"]["failed"] == 0
    assert s["sds"]["diverged"] == pytest.approx(2 / 6) and s["sdi"]["diverged"] == 0
    mean, std, n, bad = s["sds"]["psnr"]
    assert (n, bad) == (5, 1) and mean == pytest.approx((20 + 21 * 2 + 22 * 2) / 5)
    q = [0.8 + 0.01 * sd + 0.001 * st for sd in range(3) for st in (3, 10)]
    assert s["sdi"]["quality"][0] == pytest.approx(np.mean(q))
    assert s["sdi"]["quality"][1] == pytest.approx(np.std(q, ddof=1))


def test_publish_markdown_prints_and_writes_into_new_folders_and_quotes_the_command(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "report.md"
    publish_markdown("# T\n| x |\n", out)
    publish_markdown("# not written\n", None)
    assert out.read_text() == "# T\n| x |\n" and capsys.readouterr().out == "# T\n| x |\n\n# not written\n\n"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left beside it
    assert script_command("kappa_norm.py", ["--out", "a b.md"]) == "python benchmarks/kappa_norm.py --out 'a b.md'"


def test_write_report_markdown_and_pngs(tmp_path):
    rows = _fake_rows()
    command = ["sdi", "bench", "--suite", "toy run"]
    path = write_report(rows, tmp_path, "Toy benchmark", metrics=["quality", "psnr"], command=command)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "# Toy benchmark" in text and "sdi bench --suite 'toy run'" in text
    assert "| sdi | 7 | 1 | 0.0% |" in text and "33.3%" in text and "1 non-finite" in text
    assert "killed / by SIGKILL" in text
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["bar_psnr.png", "bar_quality.png"]
    line = line_plot(rows, "params.inv_steps", "quality", "method", tmp_path / "quality_vs_steps.png")
    group_by = ("method", "params.inv_steps")
    by_group = write_report(rows, tmp_path / "g", "By steps", group_by=group_by, metrics=["quality"], command="x")
    assert "| sds | 10 | 3 | 0 |" in by_group.read_text()
    for p in [*pngs, line]:
        with Image.open(p) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


# ---------------------------------------------------------------------------------------------- CLIP


def _tiny_clip_folder(folder: Path) -> Path:
    """A random CLIP (2 layers, width 32, 30x30 images) and a per-character tokenizer, all offline."""
    from transformers import CLIPConfig, CLIPModel

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    eos = vocab["<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    special |= {"unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    tok_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 32, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos)
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=30, patch_size=10
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from sdi.bench.clip_score import load_clip

    return load_clip(_tiny_clip_folder(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def test_clip_score_matches_manual_cosine(tiny_clip):
    from sdi.bench.clip_score import clip_score, preprocess

    images = _images(b=3, h=40, w=52, seed=2)
    prompts = ["a ripe strawberry", "a blue tulip", "a shell"]
    score = clip_score(tiny_clip, images, prompts)
    tok = tiny_clip.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pixels = preprocess(tiny_clip, images)
        out = tiny_clip.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels)
    cos = out.logits_per_image.diagonal() / tiny_clip.model.logit_scale.exp()
    assert torch.allclose(score, 100 * cos.clamp_min(0), atol=1e-4)
    assert torch.isfinite(score).all() and (score >= 0).all() and (score <= 100).all()
    assert torch.equal(score, clip_score(tiny_clip, images, prompts))  # deterministic
    assert clip_score(tiny_clip, images, "a shell").shape == (3,)
    with pytest.raises(ValueError, match="one prompt or one per image"):
        clip_score(tiny_clip, images, prompts[:2])


def test_clip_iqa_in_range_and_deterministic(tiny_clip):
    from sdi.bench.clip_score import IQA_PROMPTS, clip_iqa, image_embeddings, text_embeddings

    images = _images(b=2, h=30, w=30, seed=3)
    iqa = clip_iqa(tiny_clip, images)
    assert set(iqa) == {"quality", "sharpness", "real"}
    for v in iqa.values():
        assert v.shape == (2,) and torch.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
    again = clip_iqa(tiny_clip, images)
    assert all(torch.equal(iqa[k], again[k]) for k in iqa)
    # A random CLIP saturates the paper's pairs at logit scale 100; a near-synonym pair does not.
    pair = ("aaaa", "aaab")
    soft = clip_iqa(tiny_clip, images, {"close": pair})["close"]
    assert ((soft > 0.01) & (soft < 0.99)).all()
    img = image_embeddings(tiny_clip, images)
    for name, prompts in {**IQA_PROMPTS, "close": pair}.items():
        pos, neg = text_embeddings(tiny_clip, list(prompts))
        expected = torch.sigmoid(100 * (img @ pos - img @ neg))  # a 2-way softmax is a sigmoid of the difference
        assert torch.allclose(soft if name == "close" else iqa[name], expected, atol=1e-5)


def test_preprocess_at_native_size_only_normalises(tiny_clip):
    from sdi.bench.clip_score import preprocess

    images = _images(b=1, h=30, w=30)
    mean, std = torch.tensor(tiny_clip.mean).view(1, 3, 1, 1), torch.tensor(tiny_clip.std).view(1, 3, 1, 1)
    assert torch.allclose(preprocess(tiny_clip, images) * std + mean, images, atol=1e-5)
    assert preprocess(tiny_clip, _images(b=1, h=40, w=64)).shape == (1, 3, 30, 30)


def test_load_clip_missing_folder_says_what_to_do(tmp_path):
    from sdi.bench.clip_score import load_clip

    with pytest.raises(FileNotFoundError, match="clip-vit-base-patch32"):
        load_clip(tmp_path / "nope")
