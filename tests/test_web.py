"""`sdi serve` in a real browser: headless Chromium (Debian's) drives the page of a server started as a user
would, through the network. Where Chromium, chromedriver, selenium or gradio are missing, these tests fail
in CI (CI=true; .ci/run installs them all) and are skipped elsewhere, saying what is missing."""

from __future__ import annotations

import io
import os
import time
import urllib.request
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from sdi.web import testing

TINY_PROMPT = "a red cube"  # as in conftest.py: the session's prior cache has it at 16 px


def require_browser() -> None:
    needs = testing.missing()
    if needs:
        message = "browser tests need " + "; ".join(needs)
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`sdi serve` on a free port over an empty runs folder: (URL, runs folder, process)."""
    require_browser()
    runs = tmp_path_factory.mktemp("serve") / "runs"
    process, url = testing.start_server(runs, testing.free_port())
    yield url, runs, process
    testing.stop_server(process)


@pytest.fixture(scope="module")
def browser(server):
    browser = testing.Browser()
    yield browser
    browser.close()


def cli_error(capsys, argv) -> str:
    """The one line `sdi ARGV` prints on stderr."""
    from sdi.cli.main import main

    assert main(argv) == 2
    return capsys.readouterr().err.strip()


def test_bad_input_shows_the_cli_error_and_the_server_lives_on(server, browser, capsys):
    url, runs, process = server
    page = testing.Page(browser, url)
    cases = [("", None, "the empty prompt"), ("a zebra cube", None, "an unknown word"),
             (TINY_PROMPT, "/nowhere/sd-2-1", "a missing Stable Diffusion folder")]
    for prompt, sd_folder, what in cases:
        page.type("prompt", prompt or " ")
        if sd_folder:
            page.choose("prior", "Stable Diffusion folder")
            page.type("sd_folder", sd_folder)
        expected = cli_error(capsys, ["generate", prompt or " ", "--quiet"] +
                             (["--prior", f"sd:{sd_folder}"] if sd_folder else []))
        page.generate()
        try:
            page.wait_status(lambda text: text == expected, 30, f"the error for {what}")
        except TimeoutError:
            assert page.status() == expected, what  # shows the difference
    assert process.poll() is None  # still serving
    assert not runs.exists() or not any(runs.iterdir())  # nothing was started


def test_a_tiny_run_from_the_page(server, browser, tmp_path):
    url, runs, process = server
    page = testing.Page(browser, url)
    page.type("prompt", TINY_PROMPT)
    page.type("steps", "60")  # long enough (a second or two) for the page to show the training's progress
    page.type("resolution", "16")
    start = time.perf_counter()
    page.generate()
    seen = set()
    done = page.wait_status(lambda text: seen.add(text.split(":")[0]) or text.startswith(("Done", "sdi ")), 240,
                            "the run to finish")
    elapsed = time.perf_counter() - start
    assert done.startswith("Done: 60 steps") and "iso level" in done, done
    assert any(s.startswith("Training step") for s in seen), seen
    run_dir = runs / "a-red-cube-fast-s0"
    assert f"wrote {run_dir}" in done and (run_dir / "mesh.glb").is_file()

    # the turntable, served by the page: all 36 frames (it may arrive just after the status line says Done)
    gif = browser.wait(lambda d: d.find_elements(page.by.CSS_SELECTOR, "#turntable img"), 30, "the turntable")[0]
    with urllib.request.urlopen(gif.get_attribute("src"), timeout=10) as response:
        assert Image.open(io.BytesIO(response.read())).n_frames == 36
    assert browser.driver.execute_script("return arguments[0].naturalWidth", gif) > 0
    browser.wait(lambda d: d.find_elements(page.by.CSS_SELECTOR, "#model3d canvas"), 30, "the 3D view's canvas")
    drawn = browser.wait(lambda d: page.drawn_fraction("#model3d canvas") > 0.02 and page.drawn_fraction(
        "#model3d canvas"), 30, "the textured mesh to be drawn")
    wanted = {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply", "turntable.mp4"}
    links = browser.wait(lambda d: wanted <= set(page.downloads()) and page.downloads(), 30, "the download links")
    with urllib.request.urlopen(links["mesh.glb"], timeout=10) as response:  # the GLB as a user downloads it
        glb = trimesh.load(io.BytesIO(response.read()), file_type="glb", force="mesh")
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals) and glb.visual.material.baseColorTexture.size == (
        512, 512)
    assert "a-red-cube-fast-s0" in page.find("#runs").get_attribute("textContent")  # listed among earlier runs
    shot = Path(os.environ.get("SDI_SCREENSHOTS", tmp_path)) / "serve-tiny-run.png"
    browser.driver.save_screenshot(str(shot))
    print(f"tiny run from the page: {elapsed:.1f} s to done; 3D view {drawn:.0%} drawn; screenshot {shot}")
    assert process.poll() is None
