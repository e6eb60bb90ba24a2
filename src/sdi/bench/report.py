"""Markdown reports and plots from ``run_grid`` rows (or ``read_runs`` of a ``runs.csv``).

A column name may be a metric, a ``runs.csv`` column (``method``, ``seed``...) or ``params.<name>`` for
one job parameter (read from the ``params`` JSON), e.g. ``group_by=("method", "params.inv_steps")``.
Statistics use the ``ok`` rows only; non-finite values (a diverged PSNR of ``inf``, a NaN loss) are left
out of means and counted separately. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (and none on a cluster node)
import matplotlib.pyplot as plt  # noqa: E402

from sdi.bench.runner import ROW_COLUMNS  # noqa: E402
from sdi.io import atomic_path, atomic_write_text  # noqa: E402

Row = Mapping[str, Any]
DIVERGED = "diverged"
"""A metric (truthy = the run diverged) summarised as a share, like Table 1's "diverged" column."""


def row_value(row: Row, name: str) -> Any:
    """``row[name]``, or the job parameter ``<p>`` for ``name = "params.<p>"``; ``None`` when absent."""
    if name.startswith("params."):
        params = row.get("params") or "{}"
        return (json.loads(params) if isinstance(params, str) else params).get(name[len("params.") :])
    return row.get(name)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def numeric_metrics(rows: Iterable[Row]) -> list[str]:
    """Names of the metric columns that hold numbers in some ``ok`` row (excluding ``diverged``), sorted."""
    names = {k for r in rows if r.get("status") == "ok" for k, v in r.items() if _number(v) is not None}
    return sorted(names - set(ROW_COLUMNS) - {DIVERGED})


def _group_rows(rows: Iterable[Row], group_by: Sequence[str]) -> dict[tuple[str, ...], list[Row]]:
    """Rows per group key, groups in order of first appearance."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(str(row_value(r, g)) for g in group_by), []).append(r)
    return groups


def mean_std(values: Iterable[Any]) -> tuple[float, float, int, int]:
    """(mean, sample std, number of finite values, number of non-finite ones); NaN mean when none are finite."""
    nums = [x for x in (_number(v) for v in values) if x is not None]
    finite = [x for x in nums if math.isfinite(x)]
    if not finite:
        return math.nan, math.nan, 0, len(nums)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), std, len(finite), len(nums) - len(finite)


def summarize(
    rows: Iterable[Row], group_by: Sequence[str] = ("method",), metrics: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per group: the group values, ``runs``, ``failed``, ``diverged`` share (``None`` if never
    reported) and, per metric, ``(mean, std, n_finite, n_nonfinite)`` over the group's ok rows."""
    rows = list(rows)
    metrics = numeric_metrics(rows) if metrics is None else list(metrics)
    out = []
    for key, members in _group_rows(rows, group_by).items():
        ok = [r for r in members if r.get("status") == "ok"]
        div = [_number(r[DIVERGED]) for r in ok if _number(r.get(DIVERGED)) is not None]
        entry: dict[str, Any] = dict(zip(group_by, key))
        diverged = sum(d != 0 for d in div) / len(div) if div else None
        entry.update(runs=len(members), failed=len(members) - len(ok), diverged=diverged)
        entry.update({m: mean_std(row_value(r, m) for r in ok) for m in metrics})
        out.append(entry)
    return out


def _fmt(stat: tuple[float, float, int, int]) -> str:
    mean, std, n, bad = stat
    text = "–" if n == 0 else f"{mean:.4g} ± {std:.2g}"
    return text + (f" ({bad} non-finite)" if bad else "")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def bar_plot(summary: Sequence[Mapping[str, Any]], metric: str, group_by: Sequence[str], path: str | Path) -> Path:
    """Bar chart of one metric's mean per group, with ±1 std error bars, saved as PNG."""
    labels = [" / ".join(str(s[g]) for g in group_by) for s in summary]
    means = [s[metric][0] for s in summary]
    stds = [s[metric][1] for s in summary]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 3.5))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    crowded = len(labels) > 4
    ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (mean ± std)")
    fig.tight_layout()
    return _save(fig, Path(path))


def line_plot(
    rows: Iterable[Row], x: str, y: str, group: str = "method", path: str | Path = "line.png", title: str | None = None
) -> Path:
    """Mean ± std of ``y`` against numeric ``x`` (e.g. ``t``, ``params.inv_steps``), one line per ``group``; PNG.

    Ok rows with the same group and x are averaged; rows whose x or y is not a finite number are skipped.
    """
    series: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        xv, yv = _number(row_value(r, x)), _number(row_value(r, y))
        if r.get("status", "ok") != "ok" or xv is None or yv is None or not math.isfinite(yv):
            continue
        series.setdefault(str(row_value(r, group)), {}).setdefault(xv, []).append(yv)
    if not series:
        raise ValueError(f"no ok rows with numeric {x!r} and {y!r} to plot")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in series.items():
        xs = sorted(points)
        stats = [mean_std(points[v]) for v in xs]
        mean = [s[0] for s in stats]
        ax.plot(xs, mean, marker="o", label=name)
        ax.fill_between(xs, [m - s[1] for m, s in zip(mean, stats)], [m + s[1] for m, s in zip(mean, stats)], alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x}")
    ax.legend(title=group)
    fig.tight_layout()
    return _save(fig, Path(path))


def write_report(
    rows: Iterable[Row],
    out_dir: str | Path,
    title: str,
    group_by: Sequence[str] = ("method",),
    metrics: Sequence[str] | None = None,
    command: str | Sequence[str] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` (mean ± std per group, failed runs, diverged share) and one bar chart
    ``out_dir/bar_<metric>.png`` per metric; returns the Markdown path.

    ``metrics``: columns to summarise (default: every numeric metric). ``command``: the command line that
    produced the rows, quoted in the report (default: this process's ``sys.argv``).
    """
    rows = list(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = numeric_metrics(rows) if metrics is None else list(metrics)
    summary = summarize(rows, group_by, metrics)
    if command is None:
        command = sys.argv
    command = command if isinstance(command, str) else shlex.join(command)

    header = [*group_by, "runs", "failed", "diverged", *metrics]
    lines = [f"# {title}", "", "Produced by:", "", "```", command, "```", ""]
    n_failed = sum(r.get("status") != "ok" for r in rows)
    lines += [f"{len(rows)} runs, {n_failed} failed. Cells: mean ± sample std over ok runs.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        div = "–" if s["diverged"] is None else f"{100 * s['diverged']:.1f}%"
        cells = [*(str(s[g]) for g in group_by), str(s["runs"]), str(s["failed"]), div, *(_fmt(s[m]) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m in metrics:
        if any(s[m][2] for s in summary):
            png = bar_plot(summary, m, group_by, out_dir / f"bar_{_safe(m)}.png")
            lines += [f"![{m}]({png.name})", ""]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed runs", "", "| key | error |", "|---|---|"]
        lines += [f"| {r.get('key', '')} | {str(r.get('error', '')).replace('|', '/')[:300]} |" for r in failed]
        lines.append("")
    return Path(atomic_write_text(out_dir / "report.md", "\n".join(lines)))


def script_command(script: str, argv: Sequence[str] | None = None) -> str:
    """The command line of ``benchmarks/<script>`` with ``argv`` (default: this process's arguments), to quote."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def publish_markdown(text: str, out: str | Path | None) -> None:
    """Print a benchmark's Markdown and, if ``out`` is given, write it there atomically (folders made)."""
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
