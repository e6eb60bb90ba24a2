"""Benchmarks: run a grid of jobs in isolated processes (or Ray tasks), collect metrics, write reports.

- ``sdi.bench.runner``: ``Job`` and ``run_grid`` — one process per job, results in ``runs.csv``,
  resumable, crash-tolerant (a killed job is recorded as failed).
- ``sdi.bench.report``: ``write_report`` (Markdown tables of mean ± std per group, bar charts) and
  ``line_plot``.
- ``sdi.bench.clip_score``: CLIP score and CLIP-IQA (the paper's Table 1 metrics) from a local CLIP folder.

Submodules are not imported here, so ``python -m sdi.bench.runner`` (the worker entry point) stays clean
and ``import sdi.bench`` pulls in neither matplotlib nor transformers.
"""
