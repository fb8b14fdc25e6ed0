"""The standard dSprites benchmark as one Prefect flow: every (model, seed) point a task, then one table.

``prefect.yaml``'s ``benchmark`` deployment runs :func:`multistage_benchmark` on the ``gpu`` pool with the published
length (300,000 steps at Adam 1e-4, the whole grid scored); on a CPU machine the same flow runs a CPU-minute
budget per point:

    prefect deployment run multistage-benchmark/benchmark                      # the published run, GPU workers
    prefect deployment run multistage-benchmark/benchmark -p cpu_minutes=4 -p steps=null \\
        -p overrides='{"stage_one.learning_rate": 0.001}'

or, without a server, ``python -m pipeline.benchmark --cpu-minutes 4 --seeds 0``. Each point trains and scores as
``bench/benchmark_dsprites.py`` documents (its JSON in ``bench/results/benchmark_dsprites/``, resumed from its
checkpoint when the flow runs again); the flow then writes ``bench/results/benchmark_dsprites.json``, the table and
the figure, and logs the summary's numbers and files to one MLflow run (tag ``multistage.benchmark``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

PROJECT = Path(__file__).resolve().parent.parent


def _benchmark():
    """``bench.benchmark_dsprites``. bench/ is not an installed package: its code is read from the checkout this
    flow runs in (a worker's pull step sets the working directory to it, but Prefect puts only pipeline/ on the
    path), and only when the flow runs, so that deploying needs no more than pipeline/."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    from bench import benchmark_dsprites

    return benchmark_dsprites


@task(name="benchmark-point", task_run_name="{model}-s{seed}")
def benchmark_point(
    model: str,
    seed: int,
    cpu_minutes: float | None,
    steps: int | None,
    overrides: dict[str, Any],
    factor_images: int,
    threads: int,
    device: str,
    out_dir: str,
    work: str,
    data_root: str | None = None,
) -> dict:
    """One (model, seed), trained (or resumed) and scored in a process of its own (its own random state, thread
    count and CPU clock, whatever runs beside it); its JSON record."""
    command = [sys.executable, "-m", "bench.benchmark_dsprites", "--models", model, "--seeds", str(seed)]
    command += ["--cpu-minutes", str(cpu_minutes)] if cpu_minutes is not None else ["--steps", str(steps)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    command += ["--factor-images", str(factor_images), "--threads", str(threads), "--device", device]
    command += ["--out-dir", out_dir, "--work", work] + (["--data-root", data_root] if data_root else [])
    completed = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"point {model}-s{seed} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads((Path(out_dir) / f"{model}-s{seed}.json").read_text())


@flow(name="multistage-benchmark", log_prints=True)
def multistage_benchmark(
    models: list[str] | None = None,
    seeds: list[int] | None = None,
    cpu_minutes: float | None = None,
    steps: int | None = 300000,
    overrides: dict[str, Any] | None = None,
    factor_images: int = 0,
    threads: int = 0,
    device: str = "auto",
    concurrency: int = 1,
    out_dir: str | None = None,
    work: str | None = None,
    summary: str | None = None,
    figure: str | None = None,
    data_root: str | None = None,
    name: str | None = None,
) -> dict:
    """Run ``models`` x ``seeds`` (default: all six, seeds 0-2) for ``steps`` or ``cpu_minutes`` per point,
    ``concurrency`` points at a time, then merge them into ``summary`` (with its table beside it) and ``figure``.
    ``overrides``: params leaves for every point (e.g. ``{"stage_one.learning_rate": 0.001}``); ``out_dir``,
    ``work``, ``summary``, ``figure``, ``data_root``: where the points, checkpoints, summary, figure and prepared
    grid go (default: the checkout's ``bench/results/benchmark_dsprites/``, ``bench/work/benchmark_dsprites/``,
    ``bench/results/benchmark_dsprites.json``, ``docs/studies/benchmark-dsprites/benchmark.png``, ``bench/work/``)."""
    from prefect.runtime import flow_run

    from stages.tracking import log_artifact_to_run, log_run_metrics, pipeline_run

    benchmark = _benchmark()
    out_dir = out_dir or str(benchmark.POINTS)
    work = work or str(benchmark.WORK)
    summary = summary or str(benchmark.SUMMARY)
    figure = figure or str(benchmark.FIGURE)

    models = list(models or benchmark.MODELS)
    seeds = list(seeds if seeds is not None else [0, 1, 2])
    unknown = [m for m in models if m not in benchmark.MODELS]
    if unknown:
        raise benchmark.BenchmarkError(f"unknown models {unknown}; the benchmark's: {', '.join(benchmark.MODELS)}")
    if (cpu_minutes is None) == (steps is None):
        raise benchmark.BenchmarkError("give exactly one of cpu_minutes and steps (set the other to null)")
    name = name or f"benchmark-{str(flow_run.id or 'local')[:8]}"
    summary_path = Path(summary)
    table_path = summary_path.with_suffix(".md")
    with pipeline_run(
        f"benchmark {name}",
        tags={"multistage.benchmark": name, "prefect.flow_run_id": str(flow_run.id)},
        stage="benchmark",
    ) as run_id:
        points = [(model, seed) for seed in seeds for model in models]  # every model's first seed first
        records, failures = [], []
        width = max(1, concurrency)
        for start in range(0, len(points), width):  # at most ``concurrency`` points train at once
            futures = [
                benchmark_point.submit(
                    model,
                    seed,
                    cpu_minutes,
                    steps,
                    dict(overrides or {}),
                    factor_images,
                    threads,
                    device,
                    out_dir,
                    work,
                    data_root,
                )
                for model, seed in points[start : start + width]
            ]
            for future in futures:  # a failed point (a diverged loss) does not stop the others
                outcome = future.result(raise_on_failure=False)
                (failures if isinstance(outcome, BaseException) else records).append(outcome)
        if not records:
            raise RuntimeError(f"every benchmark point failed; the first: {failures[0]}")
        table = benchmark.merge(Path(out_dir), summary_path, table_path, Path(figure), records=records)
        print(table)
        merged = json.loads(summary_path.read_text())
        numbers = {k: v for k, v in merged.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        log_run_metrics(run_id, numbers)
        for path in (summary_path, table_path, Path(figure)):
            log_artifact_to_run(run_id, path, "benchmark")
    if failures:  # merged and logged what succeeded; the flow run still fails, naming the points that did not
        raise RuntimeError(f"{len(failures)} benchmark point(s) failed: " + "; ".join(map(str, failures)))
    return {"mlflow_run_id": run_id, "points": len(records), "summary": str(summary_path), "table": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--cpu-minutes", type=float)
    budget.add_argument("--steps", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--factor-images", type=int, default=100000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    from pipeline.profiles import parse_settings
    from stages.common import InputError, ParamsError

    try:
        multistage_benchmark(
            models=args.models,
            seeds=args.seeds,
            cpu_minutes=args.cpu_minutes,
            steps=args.steps,
            overrides=parse_settings(args.set),
            factor_images=args.factor_images,
            threads=args.threads,
            concurrency=args.concurrency,
        )
    except (_benchmark().BenchmarkError, ParamsError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
