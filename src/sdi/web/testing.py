"""Drive `sdi serve` in a real browser: Debian's headless Chromium through Selenium and its chromedriver.

Nothing is downloaded: Selenium is given /usr/bin/chromedriver and /usr/bin/chromium (Debian packages
``chromium`` and ``chromium-driver``), and Chromium starts with a fresh profile and its background
networking off. WebGL (the 3D view) runs on SwiftShader, Chromium's CPU renderer. Used by the tests and by
benchmarks/screenshots.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader", "--window-size=1400,1800")


def missing() -> list[str]:
    """What a browser test needs and this machine lacks, each with how to get it."""
    needs = []
    for module, extra in (("selenium", "test"), ("gradio", "web")):
        try:
            __import__(module)
        except ImportError:
            needs.append(f"the Python package {module} (pip install -e '.[{extra}]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            needs.append(f"{path} (apt-get install -y {package})")
    return needs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path, port: int, timeout_s: float = 120.0, env: dict | None = None):
    """`sdi serve --port PORT --runs RUNS` in a subprocess; returns (process, URL) once it printed its URL."""
    env = {**os.environ, "GRADIO_TEMP_DIR": str(runs.parent / "gradio-tmp"), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "sdi.cli.main", "serve", "--port", str(port), "--runs",
                                str(runs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline, lines = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if line.startswith("sdi serve: open "):
            return process, line.split()[3]
    process.kill()
    raise RuntimeError("sdi serve did not print its URL:\n" + "".join(lines))


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Browser:
    """A headless Chromium with a fresh, throw-away profile (``driver`` is Selenium's WebDriver)."""

    def __init__(self):
        os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager, should anything start it
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="sdi-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def wait(self, condition, timeout_s: float, what: str):
        """``condition(driver)``'s first truthy value within ``timeout_s``, else a TimeoutError naming ``what``."""
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.25).until(condition)
        except Exception as error:  # selenium's TimeoutException: say what was awaited
            raise TimeoutError(f"waited {timeout_s} s for {what}") from error

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """The `sdi serve` page in a ``Browser``, by the elem_ids app.py gives its parts."""

    def __init__(self, browser: Browser, url: str, timeout_s: float = 60.0):
        from selenium.webdriver.common.by import By

        self.browser, self.driver, self.by = browser, browser.driver, By
        self.driver.get(url)
        browser.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"), timeout_s, "the page's form")

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def type(self, elem_id: str, text: str) -> None:
        """Replace the text of the textbox ``elem_id``."""
        box = self.find(f"#{elem_id} textarea, #{elem_id} input")
        box.clear()
        box.send_keys(text)

    def choose(self, elem_id: str, label: str) -> None:
        """Click the radio button labelled ``label`` in ``elem_id``."""
        for option in self.driver.find_elements(self.by.CSS_SELECTOR, f"#{elem_id} label"):
            if option.text.strip() == label:
                option.click()
                return
        raise LookupError(f"no option {label!r} in #{elem_id}")

    def generate(self) -> None:
        self.find("#generate").click()

    def status(self) -> str:
        return self.find("#status p").text.strip()  # the line itself, not Gradio's progress timer beside it

    def wait_status(self, predicate, timeout_s: float, what: str) -> str:
        """The status line once ``predicate(text)`` holds."""
        return self.browser.wait(lambda d: predicate(self.status()) and self.status(), timeout_s, what)

    def drawn_fraction(self, css: str) -> float:
        """Fraction of the element's pixels that are not (near) white: how much of it shows something."""
        import io

        import numpy as np
        from PIL import Image

        shot = np.asarray(Image.open(io.BytesIO(self.find(css).screenshot_as_png)).convert("RGB")).astype(int)
        return float((np.abs(shot - 255).max(-1) > 24).mean())

    def downloads(self) -> dict[str, str]:
        """File name -> URL of every download link of the page's file list."""
        links = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#files a[download]')).map(a => [a.download, a.href])")
        return dict(links)
