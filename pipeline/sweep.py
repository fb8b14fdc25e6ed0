"""Sweeps over stage-one model, beta and seed, gathered into one table and a MIG-vs-beta plot.

Two ways to run the grid, one table:

* **Prefect** (``prefect.yaml``'s ``sweep`` deployment): :func:`multistage_sweep` fans out one flow run of the
  ``pipeline`` deployment per grid point with ``run_deployment`` (so the points run wherever that deployment's
  workers are, e.g. the ``gpu`` pool, as many at once as there are workers and slots), each in its own workdir
  (``.multistage/sweeps/<sweep>/<point>``), waits for all of them, and gathers their scores from MLflow (the
  points' pipeline runs are children of the sweep's MLflow run and carry the tag ``multistage.sweep``).
* **DVC** (``dvc exp run --queue -S stage_one.betatcvae.beta=...`` then ``dvc queue start``):
  ``python -m pipeline.sweep dvc`` gathers the experiments' params and metrics from ``dvc exp show``.

Both write ``sweep/results.json`` (one row per point, plain keys: the DVC plot ``sweep_mig_vs_beta`` reads it),
``sweep/results.csv`` and ``sweep/mig_vs_beta.png`` (the report embeds the plot and the table when present).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from stages.common import (
    PARAMS_FILE,
    ParamsError,
    apply_overrides,
    atomic_write_bytes,
    atomic_write_json,
    read_params_file,
)
from stages.report import (
    HEADLINE_FRECHET,
    SWEEP_DIR,
    SWEEP_PLOT,
    SWEEP_TABLE,
    registry_params,
    resolve_best_metric,
)
from stages.tracking import (
    filed_metric,
    log_artifact_to_run,
    log_run_metrics,
    pipeline_run,
    refresh_best_alias,
    search_runs,
)

SWEEP_CSV = SWEEP_DIR / "results.csv"
WORKSPACES = Path(".multistage/sweeps")
AXES = ("model", "beta", "seed")
# table column -> metric key (metrics/*.json); plain column names so that DVC plots can address them
COLUMNS = {
    "mig_x": "x.mig.histogram20",
    "mig_y": "y.mig.histogram20",
    "mig_x_hat": "x_hat.mig.histogram20",
    "frechet_y": "frechet.factor_classifier.y",
    "frechet_x_hat": "frechet.factor_classifier.x_hat",
    "l1_x_hat": "reconstruction.x_hat.l1",
}


def beta_key(model: str, stage_one: dict) -> str:
    """Where ``model``'s beta lives in the ``stage_one`` section: its own sub-section (``stage_one.betatcvae.beta``)
    or, in a flat section, ``stage_one.beta``; a model without a beta is an error naming the models that have one."""
    section = stage_one.get(model)
    if isinstance(section, dict) and "beta" in section:
        return f"stage_one.{model}.beta"
    if "beta" in stage_one and stage_one.get("model") == model:
        return "stage_one.beta"
    having = sorted(k for k, v in stage_one.items() if isinstance(v, dict) and "beta" in v)
    raise ParamsError(
        f"sweep: stage-one model {model!r} has no 'beta' in the stage_one section; models with one: "
        f"{', '.join(having) or '(none)'}"
    )


def point_params(point: dict[str, Any], params: dict) -> dict[str, Any]:
    """A grid point ``{"model", "beta", "seed"}`` as params overrides (dotted keys)."""
    stage_one = params.get("stage_one") or {}
    overrides: dict[str, Any] = {"stage_one.model": point["model"], "stage_one.seed": point["seed"]}
    if point.get("beta") is not None:
        overrides[beta_key(point["model"], stage_one)] = point["beta"]
    return overrides


def point_of(params: dict) -> dict[str, Any]:
    """The grid point a params dict sits on (what a DVC experiment ran)."""
    stage_one = params.get("stage_one") or {}
    model = stage_one.get("model")
    try:
        beta = apply_key(params, beta_key(model, stage_one))
    except ParamsError:
        beta = None
    return {"model": model, "beta": beta, "seed": stage_one.get("seed")}


def apply_key(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def grid(
    params: dict, models: list[str] | None = None, betas: list[float] | None = None, seeds: list[int] | None = None
) -> list[dict[str, Any]]:
    """Every combination of the axes given; a missing axis keeps the params' value (beta: the model's own)."""
    if not (models or betas or seeds):
        raise ValueError("a sweep needs at least one of models, betas, seeds")
    stage_one = params.get("stage_one") or {}
    points = []
    for model, seed in itertools.product(models or [stage_one.get("model")], seeds or [stage_one.get("seed", 0)]):
        if betas:
            beta_key(model, stage_one)  # a model without a beta fails here, before anything is launched
        for beta in betas or [point_of(apply_overrides(params, {"stage_one.model": model}))["beta"]]:
            points.append({"model": model, "beta": None if beta is None else float(beta), "seed": int(seed)})
    return sorted(points, key=lambda p: (p["model"], p["seed"], p["beta"] or 0.0))


def point_label(point: dict[str, Any]) -> str:
    """``betatcvae-beta4-seed0`` (no beta part for a model without one)."""
    beta = "" if point.get("beta") is None else f"-beta{point['beta']:g}"
    return f"{point['model']}{beta}-seed{point['seed']}"


def table_row(point: dict[str, Any], scores: dict[str, float], **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {axis: point.get(axis) for axis in AXES}
    row.update({column: scores.get(key) for column, key in COLUMNS.items()})
    row.update(extra)
    return row


def write_table(rows: list[dict[str, Any]]) -> None:
    """``sweep/results.json``, ``sweep/results.csv`` and the MIG-vs-beta plot, each written atomically."""
    rows = sorted(rows, key=lambda r: (str(r.get("model")), float(r.get("beta") or 0), int(r.get("seed") or 0)))
    atomic_write_json(SWEEP_TABLE, rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(SWEEP_CSV, text.getvalue().encode())
    plot_mig_vs_beta(rows, SWEEP_PLOT)


def plot_mig_vs_beta(rows: list[dict[str, Any]], path: Path) -> None:
    """MIG of stage one on X against beta: one marker per run, a line through the mean per beta, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    done = [r for r in rows if r.get("beta") is not None and r.get("mig_x") is not None]
    for model in sorted({str(r.get("model")) for r in done}):
        points = [(float(r["beta"]), float(r["mig_x"])) for r in done if str(r.get("model")) == model]
        betas = sorted({beta for beta, _ in points})
        means = [sum(m for b, m in points if b == beta) / sum(1 for b, _ in points if b == beta) for beta in betas]
        (line,) = axis.plot(betas, means, "-", label=model)
        axis.plot(*zip(*points), "o", color=line.get_color(), alpha=0.7)
    axis.set_xlabel("beta (stage_one.<model>.beta)")
    axis.set_ylabel("MIG on X (histogram, 20 bins)")
    axis.set_title(f"Sweep: {len(done)} runs")
    if done:
        axis.legend(title="stage one")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["model", "beta", "seed", "state", *COLUMNS]
    cells = [
        [
            ("" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row[c]))
            for c in columns
        ]
        for row in rows
    ]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ Prefect sweep
def _wait_for(flow_run_ids: list, poll_seconds: float, timeout_s: float | None) -> dict:
    """Poll the API until every flow run is in a final state; returns id -> flow run."""
    from prefect.client.orchestration import get_client

    final: dict = {}
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while len(final) < len(flow_run_ids):
            for run_id in flow_run_ids:
                if run_id not in final:
                    run = client.read_flow_run(run_id)
                    if run.state is not None and run.state.is_final():
                        final[run_id] = run
            if len(final) < len(flow_run_ids):
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(
                        f"sweep: {len(flow_run_ids) - len(final)} point(s) not finished after {timeout_s:.0f} s"
                    )
                time.sleep(poll_seconds)
    return final


def _pipeline_run_scores(flow_run_id: str) -> tuple[str | None, dict[str, float]]:
    """The MLflow pipeline run a flow run logged (tag ``prefect.flow_run_id``) and its metrics."""
    runs = search_runs(f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    if not runs:
        return None, {}
    return runs[0].info.run_id, dict(runs[0].data.metrics)


@flow(name="multistage-sweep", log_prints=True)
def multistage_sweep(
    models: list[str] | None = None,
    betas: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
    deployment: str = "multistage-pipeline/pipeline",
    params_file: str = PARAMS_FILE,
    name: str | None = None,
    poll_seconds: float = 5.0,
    timeout_s: float | None = None,
) -> dict:
    """Run the pipeline deployment once per grid point (all at once), wait, and gather one table.

    ``models``, ``betas``, ``seeds``: the grid (``stage_one.model``, the model's ``beta``, ``stage_one.seed``);
    ``overrides``: params leaves set for every point; ``deployment``: the pipeline deployment the points run on.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    params = apply_overrides(read_params_file(params_file), overrides)
    points = grid(params, models, betas, seeds)
    name = name or f"sweep-{str(flow_run.id or 'local')[:8]}"
    with pipeline_run(
        f"sweep {name}", tags={"multistage.sweep": name, "prefect.flow_run_id": str(flow_run.id)}, stage="sweep"
    ) as sweep_run:
        launched = []
        for point in points:
            label = point_label(point)
            child = run_deployment(
                deployment,
                timeout=0,
                flow_run_name=f"{name}/{label}",
                tags=["sweep", name],
                parameters={
                    "params_file": params_file,
                    "overrides": {**(overrides or {}), **point_params(point, params)},
                    "workdir": str(WORKSPACES / name / label),
                    "sweep": name,
                    "mlflow_parent_run_id": sweep_run,
                },
            )
            print(f"{label}: flow run {child.id} ({child.name})")
            launched.append((point, child.id))
        finished = _wait_for([run_id for _, run_id in launched], poll_seconds, timeout_s)
        rows = []
        for point, run_id in launched:
            mlflow_run, scores = _pipeline_run_scores(str(run_id))
            rows.append(
                table_row(
                    point, scores, state=finished[run_id].state.name, flow_run_id=str(run_id), mlflow_run_id=mlflow_run
                )
            )
        write_table(rows)
        for path in (SWEEP_TABLE, SWEEP_CSV, SWEEP_PLOT):
            log_artifact_to_run(sweep_run, path, "sweep")
        done = [r for r in rows if r["state"] == "Completed"]
        log_run_metrics(sweep_run, {"sweep.points": len(rows), "sweep.completed": len(done)})
        registry = _refresh_best(params)
    print(format_table(rows))
    failed = [r for r in rows if r["state"] != "Completed"]
    if failed:
        raise RuntimeError(
            f"sweep {name}: {len(failed)} of {len(rows)} points did not complete: "
            + ", ".join(f"{point_label(r)} {r['state']}" for r in failed)
        )
    return {"name": name, "rows": rows, "table": str(SWEEP_TABLE), "plot": str(SWEEP_PLOT), "best": registry}


def _refresh_best(params: dict) -> str | None:
    """Points finishing at once may each have moved ``best`` from a partial view; settle it once all are in."""
    registry = registry_params(params)
    if not registry.enabled:
        return None
    metric = registry.best_metric
    if metric == HEADLINE_FRECHET:  # the key the points resolved it to, as filed with the newest version
        metric = resolve_best_metric(metric, {filed_metric(registry.model_name)})
    return refresh_best_alias(registry.model_name, metric, registry.best_is == "higher")


# --------------------------------------------------------------------------------------------------- DVC sweep
def dvc_experiment_rows(repo: Path = Path(".")) -> list[dict[str, Any]]:
    """One row per DVC experiment (and the baseline commit) from ``dvc exp show --json``."""
    completed = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"dvc exp show failed: {completed.stderr.strip()}")
    rows = []

    def add(record: dict, name: str) -> None:
        data = (record or {}).get("data") or {}
        if not data or data.get("status", "Success") not in ("Success", None):
            return
        nested: dict[str, Any] = {}
        for file in (data.get("params") or {}).values():
            nested |= file.get("data") or {}
        scores: dict[str, Any] = {}
        for file in (data.get("metrics") or {}).values():
            scores |= file.get("data") or {}  # metrics files have flat keys
        point = point_of(nested)
        rows.append(table_row(point, scores, state="Completed", experiment=name, rev=str(data.get("rev", ""))[:7]))

    for commit in json.loads(completed.stdout or "[]"):
        if commit.get("rev") == "workspace":
            continue
        add(commit, commit.get("name") or str(commit.get("rev", ""))[:7])
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                add(revision, experiment.get("name") or revision.get("name") or str(revision.get("rev"))[:7])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gather a sweep into sweep/results.json and sweep/mig_vs_beta.png")
    parser.add_argument("source", choices=["dvc"], help="dvc: the DVC experiments of this repository")
    parser.parse_args(argv)
    rows = dvc_experiment_rows()
    if not rows:
        print("no finished DVC experiments found (run `dvc exp run` or `dvc queue start` first)", file=sys.stderr)
        return 1
    write_table(rows)
    print(format_table(rows))
    print(f"\nwrote {SWEEP_TABLE}, {SWEEP_CSV}, {SWEEP_PLOT}; `dvc plots show` draws sweep_mig_vs_beta")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
