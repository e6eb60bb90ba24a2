"""The page of `sdi serve` (Gradio Blocks): a form, live progress, the results, earlier runs.

The form is read by `sdi generate`'s own argument parser and checks (``config_from``, ``run_device``,
``check_prior``), so bad input shows the CLI's one-line error; runs go through ``sdi.web.jobs.RunQueue``.
Gradio's front end ships in its wheel: the page works offline. Analytics and share links are off, and
fonts are the system's (no web fonts are fetched).
"""

from __future__ import annotations

import argparse
import html
import os
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from sdi import run_folder  # noqa: E402
from sdi.cli import generate as generate_cli  # noqa: E402
from sdi.cli.main import error_line  # noqa: E402
from sdi.export.figures import upscale  # noqa: E402
from sdi.io import to_uint8  # noqa: E402
from sdi.scene.catalog import vocabulary  # noqa: E402
from sdi.train.logs import side_by_side  # noqa: E402
from sdi.train.presets import PRESETS  # noqa: E402
from sdi.train.run import check_prior, run_device  # noqa: E402
from sdi.web.jobs import Job, RunQueue, status_text  # noqa: E402
from sdi.web.runs import list_runs, run_files  # noqa: E402

EMBEDDED, SD_FOLDER = "embedded (catalog prompts, CPU)", "Stable Diffusion folder"
FROM_METHOD = "(the method's)"
POLL_S = 0.4
"""Seconds between two looks at a running job."""


CSS = """
#status .failed { color: #b91c1c; font-weight: 600; }
#turntable img, #live img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""


def status_html(text: str, failed: bool = False) -> str:
    """``text`` verbatim (escaped, not Markdown: an error line must read exactly as the CLI prints it)."""
    return f'<p class="{"failed" if failed else "ok"}">{html.escape(text)}</p>'


class _FormParser(argparse.ArgumentParser):
    """`sdi generate`'s parser, raising its usage errors instead of exiting."""

    def error(self, message: str):
        raise ValueError(message)


def form_argv(prompt, method, preset, prior, sd_folder, steps, resolution, seed, texture_size) -> list[str]:
    """The `sdi generate` arguments the form stands for."""
    if prior == SD_FOLDER and not (sd_folder or "").strip():
        raise ValueError("give the Stable Diffusion folder (--prior sd:PATH), or choose the embedded prior")
    argv = [prompt or "", "--quiet"]
    argv += ["--preset", preset] if preset and preset != FROM_METHOD else ["--method", method]
    argv += ["--prior", "embedded" if prior == EMBEDDED else f"sd:{sd_folder.strip()}"]
    for flag, value in (("--steps", steps), ("--resolution", resolution), ("--seed", seed),
                        ("--texture-size", texture_size)):
        if value is not None and str(value).strip():
            argv += [flag, str(value).strip()]
    return argv


def submit(runs: Path, jobs: RunQueue, *form) -> Job:
    """Check the form as `sdi generate` does and queue the run (raises the CLI's errors)."""
    parser = _FormParser(prog="sdi generate")
    generate_cli.add_parser(parser)
    args = parser.parse_args(form_argv(*form))
    config = generate_cli.config_from(args, generate_cli.check_new_run(args), generate_cli.preset_name(args))
    mesh = generate_cli.mesh_options(args)
    preset, device = config.resolved_preset(), run_device(config)
    check_prior(config)
    run_dir = jobs.fresh_run_dir(runs, run_folder.default_name(config.prompt, config.preset, config.seed))
    return jobs.submit(config, mesh, run_dir, str(device), preset.steps)


def live_image(job: Job):
    """The latest render, views side by side, enlarged to at least 192 px high (nearest neighbour)."""
    if job.render is None:
        return None
    return to_uint8(side_by_side(upscale(job.render, max(1, 192 // job.render.shape[-2]))))


def runs_markdown(runs: Path) -> str:
    rows = [f"| {r.name} | {r.prompt} | {r.preset} | {r.prior} | {r.steps if r.steps is not None else 'unfinished'} | "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r.modified))} |" for r in list_runs(runs)]
    if not rows:
        return f"No runs in {runs} yet."
    return "\n".join(["| run | prompt | preset | prior | steps | changed |", "|---|---|---|---|---|---|", *rows])


def build(runs: Path, jobs: RunQueue | None = None) -> gr.Blocks:
    """The page over the runs folder ``runs``; runs are queued on ``jobs``."""
    jobs = jobs or RunQueue()
    words = vocabulary()
    with gr.Blocks(title="SDI: text to 3D", analytics_enabled=False) as page:
        gr.Markdown("# SDI: text to 3D by score distillation via inversion\n"
                    f"The embedded prior knows catalog prompts such as *a red cube with white stripes*: shapes "
                    f"{', '.join(words['shapes'])}; colours {', '.join(words['colors'])}; patterns "
                    f"{', '.join(words['patterns'])}.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a red cube with white stripes", elem_id="prompt")
                with gr.Row():
                    method = gr.Dropdown(list(generate_cli.METHOD_PRESETS), value="sdi", label="Method")
                    preset = gr.Dropdown([FROM_METHOD, *PRESETS], value=FROM_METHOD, label="Preset")
                prior = gr.Radio([EMBEDDED, SD_FOLDER], value=EMBEDDED, label="Prior", elem_id="prior")
                sd_folder = gr.Textbox(label="Stable Diffusion folder (a local diffusers folder)", elem_id="sd_folder",
                                       placeholder="/path/to/stable-diffusion-2-1-base")
                with gr.Row():  # text, not gr.Number: empty means "the default", and the CLI's parser reads it
                    steps = gr.Textbox(label="Steps", placeholder="the preset's", elem_id="steps")
                    resolution = gr.Textbox(label="Resolution", placeholder="the preset's", elem_id="resolution")
                with gr.Row():
                    seed = gr.Textbox("0", label="Seed", elem_id="seed")
                    texture = gr.Textbox(label="Texture px", placeholder="512 on CPU, 2048 on CUDA",
                                         elem_id="texture")
                start = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.HTML(status_html("Type a prompt and press Generate."), elem_id="status")
                live = gr.Image(label="Latest render", interactive=False, elem_id="live", height=220)
            with gr.Column(scale=2):
                with gr.Row():
                    turntable = gr.Image(label="Turntable", type="filepath", interactive=False, elem_id="turntable",
                                         height=360)
                    model = gr.Model3D(label="Textured mesh (drag to turn)", clear_color=(1, 1, 1, 1),
                                       elem_id="model3d", height=360)
                views = gr.Image(label="Held-out views: rgb, normals, opacity", type="filepath", interactive=False)
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="files")
        gr.Markdown("## Earlier runs")
        with gr.Row():
            earlier = gr.Dropdown([], label="Show a run", elem_id="earlier", scale=3)
            refresh = gr.Button("Refresh", scale=1)
        table = gr.Markdown(runs_markdown(runs), elem_id="runs")
        results = [turntable, model, views, files]

        def shown(run_dir: Path) -> dict:
            found = run_files(run_dir)
            return {turntable: found["turntable"], model: found["glb"], views: found["views"],
                    files: [str(p) for p in found["downloads"]] or None}

        def listing(selected: str | None = None) -> dict:
            names = [r.name for r in list_runs(runs)]
            return {table: runs_markdown(runs), earlier: gr.Dropdown(choices=names, value=selected)}

        def run(*form):
            try:
                job = submit(runs, jobs, *form)
            except Exception as error:  # noqa: BLE001 - bad input is shown as the CLI's line; a bug propagates
                line = error_line("generate", error)
                if line is None:
                    raise
                yield {status: status_html(line, failed=True)}
                return
            last = None
            while True:
                over = job.over  # read first: the status below then includes the end
                text = status_text(job, jobs.ahead(job))
                if text != last:
                    yield {status: status_html(text, failed=job.state == "failed"), live: live_image(job)}
                    last = text
                if over:
                    break
                time.sleep(POLL_S)
            # Selecting the finished run shows its results (the dropdown's change event below), as for earlier runs.
            yield listing(job.run_dir.name if job.state == "done" else None)

        def show(name):
            return shown(runs / name) if name else [gr.skip()] * len(results)

        form = [prompt, method, preset, prior, sd_folder, steps, resolution, seed, texture]
        start.click(run, form, [status, live, table, earlier], concurrency_limit=None)
        prompt.submit(run, form, [status, live, table, earlier], concurrency_limit=None)
        earlier.change(show, earlier, results)
        refresh.click(lambda: listing(), None, [table, earlier])
        page.load(lambda: listing(), None, [table, earlier])
    return page


def serve(runs: Path, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted; prints its URL."""
    runs.mkdir(parents=True, exist_ok=True)
    page = build(runs)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    try:
        _, url, _ = page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
                                prevent_thread_lock=True, allowed_paths=[str(runs.resolve())], ssr_mode=False,
                                    theme=theme, css=CSS, footer_links=["settings"])
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise ValueError(f"cannot listen on {host}:{port} ({str(error).splitlines()[0]}); "
                         "pick another --port or --host") from None
    print(f"sdi serve: open {url} (runs in {runs}/; Ctrl+C stops)", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        page.close()
        raise
