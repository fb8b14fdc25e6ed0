"""MLflow tracking for stages: one parent run per pipeline execution, one child run per stage.

DVC runs every stage in its own process, so the parent's id travels in a variable of our own,
``MULTISTAGE_PARENT_RUN_ID`` (MLflow's ``MLFLOW_RUN_ID`` would make the child *resume* the parent instead of
nesting under it, so it is removed from the environment of the child). :func:`pipeline_run` opens the parent and
sets that variable for everything started inside it (``make run``, ``python -m pipeline.repro``, the Prefect flow);
a stage started on its own (a bare ``dvc repro``) logs a top-level run instead.

The default store is a SQLite file at the repository root, addressed by an absolute path: inside a
``dvc exp run`` temporary workspace (``.dvc/tmp/exps/...``) the root is the real repository's, so runs are not lost
with the workspace. ``MLFLOW_TRACKING_URI`` overrides it (a tracking server works unchanged).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

PARENT_RUN_VARIABLE = "MULTISTAGE_PARENT_RUN_ID"
EXPERIMENT_VARIABLE = "MULTISTAGE_EXPERIMENT"
DEFAULT_EXPERIMENT = "multistage"


def repository_root() -> Path:
    """The project root: ``DVC_ROOT`` when DVC runs us, else the current folder; a path inside a DVC
    experiment temp workspace is mapped back to the repository that owns it."""
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def default_tracking_uri() -> str:
    return f"sqlite:///{repository_root() / 'mlruns.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location() -> str:
    return (repository_root() / "mlartifacts").as_uri()


def git_commit(root: Path | None = None) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repository_root(), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def _mlflow():
    import mlflow

    os.environ.pop("MLFLOW_RUN_ID", None)  # would resume a run instead of nesting under our parent
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(mlflow) -> str:
    name = os.environ.get(EXPERIMENT_VARIABLE, DEFAULT_EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # our own store keeps artifacts beside it; a user's tracking server decides for itself
    location = artifact_location() if tracking_uri() == default_tracking_uri() else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage process
        return mlflow.get_experiment_by_name(name).experiment_id


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, Any] = {}
    _flatten("", params, out)
    return {key: str(value)[:6000] for key, value in out.items()}


def common_tags(stage: str) -> dict[str, str]:
    tags = {
        "mlflow.source.git.commit": git_commit(),
        "git_commit": git_commit(),
        "DVC_STAGE": os.environ.get("DVC_STAGE", stage),
        "multistage.stage": stage,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["DVC_EXP_NAME"] = os.environ["DVC_EXP_NAME"]
    return tags


class StageRun:
    """The handle a stage logs through; thin over MLflow so a stage never juggles run ids itself."""

    def __init__(self, mlflow, run):
        self._mlflow = mlflow
        self.run = run
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(flat_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """A child run (under ``MULTISTAGE_PARENT_RUN_ID`` when set) for one stage, ended FAILED on an error."""
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_RUN_VARIABLE) or None
    run = mlflow.start_run(
        experiment_id=experiment_id(mlflow),
        run_name=stage,
        parent_run_id=parent,
        nested=parent is not None,
        tags=common_tags(stage),
    )
    handle = StageRun(mlflow, run)
    try:
        if params:
            handle.log_params(params)
        yield handle
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_run_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Log final scores onto a run by id (the parent run, so the runs table shows them at the top level)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v]
    client = _mlflow().MlflowClient()
    for start in range(0, len(batch), 900):  # the REST API takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=batch[start : start + 900])


@contextlib.contextmanager
def pipeline_run(name: str = "pipeline", tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Open the parent run of one pipeline execution and export its id to every stage started inside."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id(mlflow), run_name=name, tags={**common_tags("pipeline"), **dict(tags or {})}
    )
    previous = os.environ.get(PARENT_RUN_VARIABLE)
    os.environ[PARENT_RUN_VARIABLE] = run.info.run_id
    try:
        yield run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    else:
        client.set_terminated(run.info.run_id, status="FINISHED")
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_VARIABLE, None)
        else:
            os.environ[PARENT_RUN_VARIABLE] = previous
