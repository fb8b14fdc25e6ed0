"""MLflow tracking for stages: one parent run per pipeline execution, one child run per stage.

DVC runs every stage in its own process, so the parent's id travels in ``MULTISTAGE_PARENT_RUN_ID`` (MLflow's
``MLFLOW_RUN_ID`` would make the child resume the parent instead of nesting under it, so it is removed from the
child's environment). `pipeline_run` opens the parent; a stage started on its own logs a top-level run. The
default store is a SQLite file at the repository root, by absolute path (``dvc exp run`` workspaces log to it
too), its schema created under a file lock; ``MLFLOW_TRACKING_URI`` overrides it. Every stage run is tagged with
its device (`record_device`), ``CUDA_VISIBLE_DEVICES``, host and process id; an error ends it FAILED, SIGTERM and
Ctrl-C KILLED, and runs of processes that died are marked KILLED by the next run of the stage. The registry:
`register_model_version` files a stage-two model and moves the alias ``newest``; `refresh_best_alias` points
``best`` at the version with the best metric. More: docs/operating.md, "MLflow: UI, tracking server, registry".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PARENT_RUN_VARIABLE = "MULTISTAGE_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"
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


def artifact_location(uri: str | None = None) -> str | None:
    """``mlartifacts/`` beside a SQLite store (ours, or one a sweep point pinned); a server decides for itself."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def git_commit(root: Path | None = None) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repository_root(), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


_READY_STORES: set[str] = set()
STORE_ATTEMPTS = 5


def _mlflow():
    import mlflow

    os.environ.pop("MLFLOW_RUN_ID", None)  # would resume a run instead of nesting under our parent
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri not in _READY_STORES:
        prepare_store(mlflow, uri)
        _READY_STORES.add(uri)
    return mlflow


def prepare_store(mlflow, uri: str) -> None:
    """Open a SQLite store once under a file lock beside it (``<name>.db.lock``), so that MLflow creates (or checks)
    its schema in one process at a time: two processes creating the tables at once fail (``table alembic_version
    already exists``). A failure is retried a few times (the file on a shared disk being migrated from another
    machine, which the lock does not see). Other stores are left to their server."""
    if not uri.startswith("sqlite:///"):
        return  # a tracking server (or another database) manages its own schema
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(database) + ".lock", timeout=600)
    for attempt in range(STORE_ATTEMPTS):
        try:
            with lock:
                client = mlflow.MlflowClient(uri)
                client.search_experiments(max_results=1)  # the tracking tables
                client.search_registered_models(max_results=1)  # the registry tables (same file)
            return
        except Exception:
            if attempt == STORE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def experiment_id(mlflow) -> str:
    name = os.environ.get(EXPERIMENT_VARIABLE, DEFAULT_EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location())
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


_DEVICE: dict[str, str] = {}


def record_device(device) -> None:
    """Remember the device this process computes on; every stage run started afterwards is tagged with it."""
    _DEVICE.clear()
    _DEVICE.update(device_tags(device))


def recorded_device() -> dict[str, str]:
    """The device tags :func:`record_device` noted in this process (empty before a device was chosen)."""
    return dict(_DEVICE)


def device_tags(device) -> dict[str, str]:
    """``device`` (``cpu``, ``cuda:0``), its hardware name, ``CUDA_VISIBLE_DEVICES`` as this process sees it, and
    torch's CPU thread count: a seeded run repeats bit for bit on the same device and thread count, while another
    thread count sums in another order and trained networks, hence scores, drift (docs/evaluation.md, Known limits)."""
    import platform

    import torch

    tags = {
        "device": str(device),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        "torch.threads": str(torch.get_num_threads()),
    }
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        tags["device.name"] = torch.cuda.get_device_name(device)
    else:
        tags["device.name"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    return tags


def common_tags(stage: str) -> dict[str, str]:
    tags = {
        "mlflow.source.git.commit": git_commit(),
        "git_commit": git_commit(),
        "DVC_STAGE": os.environ.get("DVC_STAGE", stage),
        "multistage.stage": stage,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["DVC_EXP_NAME"] = os.environ["DVC_EXP_NAME"]
    tags[HOST_TAG], tags[PID_TAG] = socket.gethostname(), str(os.getpid())
    return tags | _DEVICE


HOST_TAG = "multistage.host"
PID_TAG = "multistage.pid"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def end_orphaned_runs(mlflow, experiment: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``stage`` started on this host by a process that is gone (kill -9); the ids.
    Runs of other hosts, and runs whose process is alive (a parallel experiment), are left alone."""
    client = mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    ended = []
    for run in client.search_runs(
        [experiment],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`multistage.stage` = '{stage}' and tags.`{HOST_TAG}` = '{host}'"
        ),
        max_results=1000,
    ):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            client.set_tag(run.info.run_id, "multistage.ended_by", "the next run of this stage: its process was gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


class Terminated(SystemExit):
    """SIGTERM arrived: the process is being cancelled (exit status 143)."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` inside the block, so a run can be ended KILLED before the process goes
    (only in the main thread, where Python delivers signals; a Prefect task thread keeps the handler it has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def end_status(error: BaseException) -> str:
    """KILLED for a cancellation (SIGTERM, Ctrl-C), FAILED for anything else."""
    return "KILLED" if isinstance(error, (Terminated, KeyboardInterrupt)) else "FAILED"


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
    """A child run (under ``MULTISTAGE_PARENT_RUN_ID`` when set) for one stage, ended FAILED on an error and KILLED
    on SIGTERM or Ctrl-C; runs of this stage left RUNNING by a dead process are marked KILLED first."""
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_RUN_VARIABLE) or None
    experiment = experiment_id(mlflow)
    end_orphaned_runs(mlflow, experiment, stage)
    with sigterm_as_exit():
        run = mlflow.start_run(
            experiment_id=experiment,
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
        except BaseException as error:
            mlflow.end_run(status=end_status(error))
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


def search_runs(filter_string: str) -> list:
    """Runs of our experiment matching an MLflow filter (``tags.`multistage.sweep` = 'x'``)."""
    mlflow = _mlflow()
    return mlflow.MlflowClient().search_runs([experiment_id(mlflow)], filter_string=filter_string)


def log_artifact_to_run(run_id: str, path: str | Path, folder: str | None = None) -> None:
    _mlflow().MlflowClient().log_artifact(run_id, str(path), folder)


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    client = _mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def pipeline_run(
    name: str = "pipeline",
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    stage: str = "pipeline",
) -> Iterator[str]:
    """Open the parent run of one pipeline execution and export its id to every stage started inside.

    ``parent_run_id`` nests the pipeline itself under another run (a sweep's run, one level up).
    """
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    tags = {**common_tags(stage), **dict(tags or {})}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    experiment = experiment_id(mlflow)
    end_orphaned_runs(mlflow, experiment, stage)
    run = client.create_run(experiment, run_name=name, tags=tags)
    previous = os.environ.get(PARENT_RUN_VARIABLE)
    os.environ[PARENT_RUN_VARIABLE] = run.info.run_id
    try:
        with sigterm_as_exit():
            yield run.info.run_id
    except BaseException as error:
        client.set_terminated(run.info.run_id, status=end_status(error))
        raise
    else:
        client.set_terminated(run.info.run_id, status="FINISHED")
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_VARIABLE, None)
        else:
            os.environ[PARENT_RUN_VARIABLE] = previous


# ---------------------------------------------------------------------------------------------- model registry
DIGEST_TAG = "multistage.model_digest"
METRIC_NAME_TAG = "multistage.metric"
METRIC_VALUE_TAG = "multistage.metric_value"
NEWEST_ALIAS = "newest"  # the most recent pipeline run's model ("latest" is reserved by MLflow)
BEST_ALIAS = "best"


def _ensure_registered_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise  # created concurrently by another pipeline (a sweep point): fine; anything else is not


def register_model_version(
    handle: StageRun,
    model_file: str | Path,
    name: str,
    digest: str,
    metric: str,
    value: float | None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """File ``model_file`` as a version of the registered model ``name`` and point the alias ``newest`` at it.

    The file is logged as an artifact of ``handle``'s run (``stage_two_model/``) and the version's source is that
    run's artifact; a file already registered (same ``digest``) is not filed twice: its version gets the current
    metric value and becomes ``newest`` again. Returns the version number.
    """
    client = _mlflow().MlflowClient()
    _ensure_registered_model(client, name, "Stage-two models of the multistage pipeline (stages/report.py).")
    same = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(DIGEST_TAG) == digest]
    version_tags = {DIGEST_TAG: digest, METRIC_NAME_TAG: metric, **dict(tags or {})}
    if value is not None:
        version_tags[METRIC_VALUE_TAG] = repr(float(value))
    if same:
        version = max(same, key=lambda v: int(v.version)).version
        for key, tag in version_tags.items():
            client.set_model_version_tag(name, version, key, tag)
    else:
        handle.log_artifact(model_file, "stage_two_model")
        created = client.create_model_version(
            name, source=f"runs:/{handle.run_id}/stage_two_model", run_id=handle.run_id, tags=version_tags
        )
        version = created.version
    client.set_registered_model_alias(name, NEWEST_ALIAS, version)
    return str(version)


def filed_metric(name: str, alias: str = NEWEST_ALIAS) -> str | None:
    """The metric name the version of ``name`` under ``alias`` was filed with; None without such a version."""
    from mlflow.exceptions import MlflowException

    try:
        version = _mlflow().MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such model or alias yet
        raise
    return version.tags.get(METRIC_NAME_TAG)


def refresh_best_alias(name: str, metric: str, higher_is_better: bool) -> str | None:
    """Point the alias ``best`` at the version with the best recorded ``metric`` (ties: the newest); the version,
    or None when no version has a value of that metric yet."""
    client = _mlflow().MlflowClient()
    scored = []
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(METRIC_NAME_TAG) == metric and METRIC_VALUE_TAG in version.tags:
            value = float(version.tags[METRIC_VALUE_TAG])
            if value == value:
                scored.append((value if higher_is_better else -value, int(version.version)))
    if not scored:
        return None
    best = str(max(scored)[1])
    client.set_registered_model_alias(name, BEST_ALIAS, best)
    return best
