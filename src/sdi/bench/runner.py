"""A crash-tolerant grid runner: every job in its own process (or Ray task), results in ``runs.csv``.

A job function is named by a ``"package.module:function"`` string, so the same grid runs in local
subprocesses and on a Ray cluster; its module must be one of ``JOB_MODULES`` (a worker never imports a
module named anywhere else, e.g. in a file of the output folder). It takes a ``Job`` and returns a flat
``dict[str, float | str]`` of metrics. A job that raises, or whose process dies (out of memory,
SIGKILL, segfault), is recorded with status ``failed`` and its error; the runner itself goes on.

``out_dir/runs.csv`` holds one row per job key (columns ``ROW_COLUMNS`` then every metric, sorted)
and is rewritten atomically after every finished job, so an interrupted grid loses nothing and
``resume=True`` re-runs only the failed and missing jobs. Subprocess logs go to ``out_dir/logs/``.

Worker entry point: ``python -m sdi.bench.runner MODULE:FUNCTION SPEC.json RESULT.json`` (used internally; the
spec holds the job's data only). ``ray_address="local"`` starts Ray listening on 127.0.0.1 only.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdi.errors import UserError

ROW_COLUMNS = ("key", "suite", "method", "prompt", "seed", "params", "status", "error", "wall_s")
"""The fixed leading columns of ``runs.csv``; a job function may not return metrics with these names."""

JOB_MODULES = ("sdi.bench.suites", "sdi.bench.modes", "sdi.bench.selftest")
"""The only modules job functions are imported from."""

Metric = float | int | str
Record = Callable[["Job", dict[str, Any]], None]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, then ``os.replace``: readers never see half a file.

    (Like ``sdi.io.atomic_write_text``, repeated here so worker processes need not import torch.)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _freeze(value: Any) -> Any:
    """Lists become tuples (hashable, JSON round-trips to the same key); other values must be JSON scalars."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"job params must be JSON scalars or lists of them, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True)
class Job:
    """One cell of a benchmark grid. Hashable; ``params`` may be given as a dict."""

    suite: str
    """Benchmark suite, e.g. ``"2d"`` or ``"table1"``."""
    method: str
    """Distillation rule or preset name, e.g. ``"sdi"``, ``"sds"``."""
    prompt: str
    """Text prompt (may be empty for unconditional jobs)."""
    seed: int
    """Random seed the job function should use for everything it samples."""
    params: tuple[tuple[str, Any], ...] = ()
    """Extra settings as sorted ``(name, value)`` pairs; JSON scalars or lists (stored as tuples)."""

    def __post_init__(self) -> None:
        items = self.params.items() if isinstance(self.params, Mapping) else self.params
        params = tuple(sorted((str(k), _freeze(v)) for k, v in items))
        if len({k for k, _ in params}) != len(params):
            raise ValueError(f"duplicate parameter names in {params}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def params_json(self) -> str:
        return json.dumps(self.params_dict, sort_keys=True)

    @property
    def key(self) -> str:
        """Stable id ``suite-method-s<seed>-<12 hex of sha1(all fields)>``; the same on every machine and run."""
        blob = json.dumps([self.suite, self.method, self.prompt, self.seed, self.params_dict], sort_keys=True)
        digest = hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]
        return f"{self.suite}-{self.method}-s{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        fields = {"suite": self.suite, "method": self.method, "prompt": self.prompt, "seed": self.seed}
        return {**fields, "params": self.params_dict}


def load_job_fn(path: str) -> Callable[[Job], Mapping[str, Metric]]:
    """Import ``"package.module:function"`` from one of JOB_MODULES (the attribute may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"job_fn_path must look like 'package.module:function', got {path!r}")
    if module_name not in JOB_MODULES:
        raise ValueError(f"job functions come from {', '.join(JOB_MODULES)} only, not {module_name!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj


def _check_metrics(out: Any) -> dict[str, Metric]:
    """Validate a job function's return value: a flat mapping of names to numbers or strings."""
    if not isinstance(out, Mapping):
        raise TypeError(f"a job function must return a dict of metrics, got {type(out).__name__}")
    metrics: dict[str, Metric] = {}
    for name, value in out.items():
        if not isinstance(name, str) or name in ROW_COLUMNS:
            raise ValueError(f"metric name {name!r} is not a string or clashes with a runs.csv column {ROW_COLUMNS}")
        if isinstance(value, str):
            metrics[name] = value
        else:
            try:
                metrics[name] = float(value)  # numpy and 0-dim torch scalars too
            except (TypeError, ValueError):
                raise TypeError(f"metric {name!r} must be a number or a string, got {type(value).__name__}") from None
    return metrics


def _execute(job_fn_path: str, job: dict[str, Any], sys_path: list[str]) -> dict[str, Any]:
    """Run one job in the current process; exceptions become a ``failed`` result (traceback to stderr)."""
    for p in sys_path:  # a Ray task: make the driver's import roots importable here too
        if p not in sys.path and (p == "" or os.path.isdir(p)):
            sys.path.append(p)
    t0 = time.perf_counter()
    try:
        metrics = _check_metrics(load_job_fn(job_fn_path)(Job(**job)))
        return {"status": "ok", "error": "", "metrics": metrics, "wall_s": time.perf_counter() - t0}
    except Exception as e:
        traceback.print_exc()
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        return {"status": "failed", "error": error, "metrics": {}, "wall_s": time.perf_counter() - t0}


def _worker_main(job_fn_path: str, spec_path: str, result_path: str) -> None:
    """Run the job of SPEC.json (its data only) with the job function the parent named on the command line."""
    spec = json.loads(Path(spec_path).read_text())
    result = _execute(job_fn_path, spec["job"], [])
    atomic_write_text(result_path, json.dumps(result))


# ---------------------------------------------------------------------------------------- runs.csv


def _make_row(job: Job, result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key": job.key,
        "suite": job.suite,
        "method": job.method,
        "prompt": job.prompt,
        "seed": job.seed,
        "params": job.params_json,
        "status": result["status"],
        "error": result.get("error", ""),
        "wall_s": result.get("wall_s", float("nan")),
        **result.get("metrics", {}),
    }


def _parse_cell(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_runs(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Load ``runs.csv`` as ``{key: row}``; numbers come back as floats (``seed`` as int), empty cells are dropped."""
    table: dict[str, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {c: raw.get(c) or "" for c in ROW_COLUMNS}
            row["seed"] = int(row["seed"]) if row["seed"] else 0
            row["wall_s"] = float(row["wall_s"]) if row["wall_s"] else float("nan")
            metrics = {k: v for k, v in raw.items() if k and k not in ROW_COLUMNS and v not in ("", None)}
            row.update({k: _parse_cell(v) for k, v in metrics.items()})
            table[row["key"]] = row
    return table


def write_runs(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as ``runs.csv`` atomically: ``ROW_COLUMNS`` then the union of metric names, sorted."""
    rows = list(rows)
    metrics = sorted({k for r in rows for k in r if k not in ROW_COLUMNS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*ROW_COLUMNS, *metrics], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- backends


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


def _death_message(returncode: int, log: Path) -> str:
    """Why a worker left no result: the signal or exit code, and the log's last line."""
    if returncode < 0:
        try:
            how = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    last = f"; last log line: {lines[-1][:200]}" if lines else ""
    return f"worker process {how} before reporting a result (log: {log}){last}"


def _child_env(workers: int) -> dict[str, str]:
    """Environment for worker processes: ``sdi`` importable, unbuffered logs, CPU threads split between workers."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, workers))))
    return env


def _run_subprocesses(jobs: list[Job], job_fn_path: str, out_dir: Path, workers: int, record: Record) -> None:
    """At most ``workers`` concurrent ``python -m sdi.bench.runner`` processes, one per job."""
    work, logs = out_dir / ".work", out_dir / "logs"
    work.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    env = _child_env(workers)
    pending, running = deque(jobs), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.popleft()
                name = _safe_name(job.key)
                spec, result, log = work / f"{name}.spec.json", work / f"{name}.result.json", logs / f"{name}.log"
                result.unlink(missing_ok=True)
                spec.write_text(json.dumps({"job": job.to_dict()}))
                with open(log, "w") as log_file:
                    cmd = [sys.executable, "-m", "sdi.bench.runner", job_fn_path, str(spec), str(result)]
                    proc = subprocess.Popen(
                        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                    )
                running[proc] = (job, spec, result, log, time.perf_counter())
            finished = [p for p in running if p.poll() is not None]
            if not finished:
                time.sleep(0.05)
            for proc in finished:
                job, spec, result, log, t0 = running.pop(proc)
                if result.exists():
                    out = json.loads(result.read_text())
                else:
                    error = _death_message(proc.returncode, log)
                    out = {"status": "failed", "error": error, "wall_s": time.perf_counter() - t0}
                spec.unlink(missing_ok=True)
                result.unlink(missing_ok=True)
                record(job, out)
    finally:  # interrupted (Ctrl-C, an exception in `record`): leave no orphans behind
        for proc in running:
            proc.kill()
            proc.wait()
        if not any(work.iterdir()):
            work.rmdir()


_RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray takes 127.0.0.1 as the node's address (as it does on a laptop), and every server it starts
(GCS, raylet, workers, agents) listens there; ``_node_ip_address`` alone is turned back into the LAN address."""


def _start_local_ray(ray, workers: int) -> None:
    """A Ray instance on this machine listening on 127.0.0.1 only; refused, and stopped, if it is not."""
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise UserError(f"Ray started on {address}, not 127.0.0.1 only (was it imported before "
                        f"{_RAY_LOOPBACK_ENV}=0 was set?); start it yourself, `ray start --head "
                        "--node-ip-address 127.0.0.1`, and pass --ray auto")


def _ray_task(job_fn_path: str, job: dict[str, Any], sys_path: list[str]) -> dict[str, Any]:
    return _execute(job_fn_path, job, sys_path)


def _run_ray(jobs: list[Job], job_fn_path: str, ray_address: str, workers: int, record: Record) -> None:
    """One Ray task per job: ``num_gpus=1`` when the cluster has GPUs, else ``num_cpus=1``; no retries."""
    if ray_address == "local":
        os.environ[_RAY_LOOPBACK_ENV] = "0"  # before Ray is imported, which reads it once; its servers inherit it
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed: pip install 'sdi[bench]'") from None
    started = not ray.is_initialized()
    if started:
        if ray_address == "local":
            _start_local_ray(ray, workers)
        else:
            ray.init(address=ray_address, log_to_driver=False)
    try:
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        task = ray.remote(max_retries=0, **({"num_gpus": 1} if gpu else {"num_cpus": 1}))(_ray_task)
        refs = {task.remote(job_fn_path, job.to_dict(), list(sys.path)): job for job in jobs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                out = ray.get(done[0])
            except Exception as e:  # the worker died (ray.exceptions.WorkerCrashedError, OOM...) or Ray failed
                out = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
            record(job, out)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------- entry point


def run_grid(
    jobs: Iterable[Job],
    job_fn_path: str,
    out_dir: str | os.PathLike[str],
    workers: int = 2,
    ray_address: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``job_fn(job) -> dict[str, float | str]`` for every job in an isolated process; return one row per job.

    ``job_fn_path``: ``"package.module:function"``, imported in each worker. ``workers``: concurrent local
    processes (or CPUs for ``ray_address="local"``). ``ray_address``: ``None`` = local subprocesses;
    ``"local"`` = start a local Ray instance; ``"auto"`` / ``"ray://host:port"`` = join a cluster.
    ``resume``: skip jobs whose key already has status ``ok`` in ``out_dir/runs.csv``. Rows of earlier runs
    with other keys are kept; a re-run job replaces its old row. Rows come back in job order, with
    ``ROW_COLUMNS`` plus the metrics (numbers as floats).
    """
    jobs = list(jobs)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate jobs in the grid (same suite, method, prompt, seed and params)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    load_job_fn(job_fn_path)  # fail here, once, rather than in every worker
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "runs.csv"
    table = read_runs(csv_path) if csv_path.exists() else {}
    todo = [j for j in jobs if not (resume and table.get(j.key, {}).get("status") == "ok")]

    from tqdm.auto import tqdm

    desc = f"grid ({len(jobs) - len(todo)} done before)"
    with tqdm(total=len(todo), desc=desc, unit="job", disable=not progress) as bar:
        failed = 0

        def record(job: Job, result: dict[str, Any]) -> None:
            nonlocal failed
            table[job.key] = _make_row(job, result)
            write_runs(csv_path, table.values())
            failed += result["status"] != "ok"
            bar.set_postfix(failed=failed)
            bar.update()

        if ray_address is None:
            _run_subprocesses(todo, job_fn_path, out_dir, workers, record)
        else:
            _run_ray(todo, job_fn_path, ray_address, workers, record)
    return [_normalise(table[k]) for k in keys]


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    """Rows fresh from a job and rows read back from CSV look the same (floats for numbers)."""
    out = dict(row)
    for k, v in row.items():
        if k not in ROW_COLUMNS and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    out["wall_s"] = float(out["wall_s"]) if out.get("wall_s") not in ("", None) else math.nan
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m sdi.bench.runner MODULE:FUNCTION SPEC.json RESULT.json (internal worker entry point)")
    # Call through the imported module so the job function receives ``sdi.bench.runner.Job``, not ``__main__.Job``.
    from sdi.bench.runner import _worker_main as main

    main(*sys.argv[1:])
