"""The README's GPU-worker workflow, run for real on 127.0.0.1 with a temporary PREFECT_HOME: `prefect server start`,
the `gpu` and `cpu` process work pools, `prefect deploy --all` from prefect.yaml, `prefect deployment run`,
`prefect worker start --pool gpu --run-once`; the MLflow tracking server `make ui` starts (on the project's SQLite
store and artifact folder, a free loopback port) receives every run and is checked through its REST API. Then a
second identical run (every task Cached), a sweep fanning out two concurrent pipeline runs, and the registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from stages.common import file_digest
from tests.conftest import PROJECT, TINY_PARAMS, make_tiny_repo, sh, tool_env

pytestmark = pytest.mark.e2e

STAGES = ["prepare", "stage_one", "pairs", "stage_two@msvae", "evaluate", "report"]
MODEL_NAME = TINY_PARAMS["registry"]["model_name"]
SWEEP = "grid"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """A long-running process in its own process group (so that stopping it stops its children too)."""
    with open(log, "w") as handle:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 3 s (the servers hold nothing the tests still need)."""
    if process.poll() is None:
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"stopped {' '.join(map(str, process.args))[:60]} in {time.monotonic() - started:.1f} s")


def request(url: str, payload: dict | None = None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> float:
    started = time.monotonic()
    while True:
        try:
            request(url)
            return time.monotonic() - started
        except OSError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{url}: not up after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@dataclass
class Stack:
    root: Path
    env: dict
    prefect: str  # http://127.0.0.1:<port>/api
    mlflow: str  # http://127.0.0.1:<port>
    logs: Path
    deployed: subprocess.CompletedProcess | None = None  # `prefect deploy --all`

    def prefect_api(self, path: str, payload: dict | None = None):
        return request(f"{self.prefect}/{path}", payload)

    def mlflow_api(self, path: str, payload: dict | None = None):
        return request(f"{self.mlflow}/api/2.0/mlflow/{path}", payload)

    def runs(self, filter_string: str) -> list[dict]:
        experiment = self.mlflow_api("experiments/get-by-name?experiment_name=multistage")["experiment"]
        found = self.mlflow_api(
            "runs/search",
            {"experiment_ids": [experiment["experiment_id"]], "filter": filter_string, "max_results": 1000},
        )
        return found.get("runs", [])

    def run(self, *args: str, **kwargs):
        return sh(list(args), self.root, env=self.env, **kwargs)

    def trigger(self, deployment: str, *options: str) -> str:
        """`prefect deployment run` with options (``-p key=value``, ``--job-variable ...``); the flow run's id."""
        output = self.run("prefect", "deployment", "run", deployment, *options).stdout
        return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def task_states(stack: Stack, flow_run_id: str) -> dict[str, str]:
    tasks = stack.prefect_api("task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {task["name"].rsplit("-", 1)[0]: task["state_name"] for task in tasks}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Both servers on free loopback ports, the two work pools, and the deployments of prefect.yaml."""
    base = tmp_path_factory.mktemp("prefect-deployments")
    root = make_tiny_repo(base / "repo")
    prefect_port, mlflow_port = free_port(), free_port()
    env = tool_env(root) | {
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    stack = Stack(root, env, env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"], base)
    processes = []
    try:
        # `make ui` on this project's store; `-o` keeps make from reinstalling the virtual environment
        ui = start(
            [
                "make",
                "-s",
                "-C",
                str(PROJECT),
                "-o",
                ".venv/.installed",
                "ui",
                f"UI_STORE={root}",
                f"UI_PORT={mlflow_port}",
                "UI_WORKERS=1",
            ],
            root,
            tool_env(root),
            base / "mlflow-server.log",
        )
        processes.append(ui)
        server = start(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            root,
            env,
            base / "prefect-server.log",
        )
        processes.append(server)
        wait_until_up(f"{stack.mlflow}/health", ui, base / "mlflow-server.log")
        wait_until_up(f"{stack.prefect}/health", server, base / "prefect-server.log")
        for pool in ("gpu", "cpu"):
            stack.run("prefect", "work-pool", "create", pool, "--type", "process")
        stack.deployed = stack.run("prefect", "--no-prompt", "deploy", "--all")
        yield stack
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def pipeline_runs(stack) -> list[str]:
    """Two identical runs of the pipeline deployment, each picked up by `prefect worker start --run-once`; the
    second asks for another GPU through a job variable (the environment is not an input of any task)."""
    ids = []
    for options in ([], ["--job-variable", 'env={"CUDA_VISIBLE_DEVICES": "1"}']):
        ids.append(stack.trigger("multistage-pipeline/pipeline", *options))
        worker = stack.run("prefect", "worker", "start", "--pool", "gpu", "--run-once")
        assert "started" in worker.stdout
    return ids


@pytest.fixture(scope="module")
def sweep_run(stack, pipeline_runs) -> str:
    """The sweep deployment (cpu pool, --run-once) fanning out over a gpu worker that takes two runs at once."""
    gpu_worker = start(
        ["prefect", "worker", "start", "--pool", "gpu", "--limit", "2"],
        stack.root,
        stack.env,
        stack.logs / "gpu-worker.log",
    )
    try:
        sweep_id = stack.trigger(
            "multistage-sweep/sweep", "-p", "betas=[2.0, 4.0]", "-p", f'name="{SWEEP}"', "-p", "poll_seconds=1"
        )
        stack.run("prefect", "worker", "start", "--pool", "cpu", "--run-once")
    finally:
        stop(gpu_worker)
    return sweep_id


def test_pipeline_deployment_runs_on_the_gpu_pool_and_logs_to_the_tracking_server(stack, pipeline_runs):
    root = stack.root
    for name in ("multistage-pipeline/pipeline", "multistage-sweep/sweep", "multistage-benchmark/benchmark"):
        assert f"Deployment '{name}' successfully created" in " ".join(stack.deployed.stdout.split())
    flow_run = stack.prefect_api(f"flow_runs/{pipeline_runs[0]}")
    assert flow_run["state_type"] == "COMPLETED" and flow_run["work_pool_name"] == "gpu"
    deployment = stack.prefect_api(f"deployments/{flow_run['deployment_id']}")
    assert deployment["name"] == "pipeline"
    assert deployment["version"] == sh(["git", "rev-parse", "--short", "HEAD"], root).stdout.strip()
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}]
    assert deployment["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert task_states(stack, pipeline_runs[0]) == {stage: "Completed" for stage in STAGES}

    # MLflow, through the server's REST API: the parent, one child per stage, metrics, artifacts, the device
    (parent,) = stack.runs(f"tags.`prefect.flow_run_id` = '{pipeline_runs[0]}'")
    parent_tags = tags(parent)
    assert parent["info"]["status"] == "FINISHED"
    assert parent_tags["prefect.deployment"] == "multistage-pipeline/pipeline"
    assert parent_tags["device"] == "cpu"  # the tiny params ask for the CPU (select_device)
    assert parent_tags["CUDA_VISIBLE_DEVICES"] == "0"  # from the deployment's job variables
    children = {
        run["info"]["run_name"]: run for run in stack.runs(f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    }
    assert sorted(children) == sorted(STAGES)
    assert all(run["info"]["status"] == "FINISHED" for run in children.values())
    for stage in ("stage_one", "stage_two@msvae", "evaluate"):
        assert tags(children[stage])["device"] == "cpu"
    scores = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert metrics(children["evaluate"])["x.mig.histogram20"] == pytest.approx(scores["x.mig.histogram20"])
    assert metrics(parent)["conditioning.M2"] == pytest.approx(scores["conditioning.M2"])
    history = stack.mlflow_api(
        f"metrics/get-history?run_id={children['stage_one']['info']['run_id']}&metric_key=train.loss"
    )["metrics"]
    assert [m["step"] for m in history] == [4, 8, 12]

    def listed(run: dict, folder: str) -> set[str]:
        files = stack.mlflow_api(f"artifacts/list?run_id={run['info']['run_id']}&path={folder}").get("files", [])
        return {Path(f["path"]).name for f in files}

    assert "model.pt" in listed(children["stage_two@msvae"], "checkpoints")
    assert "index.html" in listed(children["report"], "report")
    report_run = children["report"]["info"]["run_id"]
    page = request(f"{stack.mlflow}/get-artifact?path=report/index.html&run_uuid={report_run}")
    assert page == (root / "report" / "index.html").read_bytes()
    # the server proxies artifacts into the project's folder, as `make ui` asked
    assert list((root / "mlartifacts").rglob("index.html"))


def test_a_second_identical_run_is_all_cached(stack, pipeline_runs):
    """Same params, code and outputs: every task Cached, the same scores; only the GPU asked for differs."""
    flow_run = stack.prefect_api(f"flow_runs/{pipeline_runs[1]}")
    assert flow_run["state_type"] == "COMPLETED"
    assert task_states(stack, pipeline_runs[1]) == {stage: "Cached" for stage in STAGES}
    first, second = (stack.runs(f"tags.`prefect.flow_run_id` = '{run_id}'")[0] for run_id in pipeline_runs)
    assert {k: v for k, v in tags(second).items() if k.startswith("stages.")} == {
        f"stages.{stage.replace('@', '.')}": "Cached" for stage in STAGES
    }
    assert tags(second)["CUDA_VISIBLE_DEVICES"] == "1"  # the run's job variable replaced the deployment's "0"
    assert metrics(second) == pytest.approx(metrics(first))  # the same scores, read from the untouched outputs


def test_sweep_fans_out_concurrent_runs_and_gathers_one_table(stack, pipeline_runs, sweep_run):
    root = stack.root
    sweep = stack.prefect_api(f"flow_runs/{sweep_run}")
    assert sweep["state_type"] == "COMPLETED" and sweep["work_pool_name"] == "cpu"
    points = stack.prefect_api("flow_runs/filter", {"flow_runs": {"tags": {"all_": ["sweep", SWEEP]}}})
    assert len(points) == 2
    assert all(p["state_type"] == "COMPLETED" and p["work_pool_name"] == "gpu" for p in points)

    rows = {row["beta"]: row for row in json.loads((root / "sweep" / "results.json").read_text())}
    assert sorted(rows) == [2.0, 4.0] and all(row["state"] == "Completed" for row in rows.values())
    # the beta-2 point has the params of the plain pipeline runs: it reproduces their scores exactly
    (first,) = stack.runs(f"tags.`prefect.flow_run_id` = '{pipeline_runs[0]}'")
    assert rows[2.0]["mig_x"] == metrics(first)["x.mig.histogram20"]
    assert rows[2.0]["frechet_x_hat"] == metrics(first)["frechet.factor_classifier.x_hat"]
    assert (root / "sweep" / "mig_vs_beta.png").stat().st_size > 5_000

    # MLflow: the sweep's run holds the two pipeline runs, each with its six stage runs, all finished; the two
    # pipelines wrote to the store at the same time
    (sweep_mlflow,) = stack.runs(f"tags.`multistage.sweep` = '{SWEEP}' and tags.`multistage.stage` = 'sweep'")
    assert sweep_mlflow["info"]["status"] == "FINISHED" and metrics(sweep_mlflow)["sweep.completed"] == 2
    pipelines = stack.runs(f"tags.`mlflow.parentRunId` = '{sweep_mlflow['info']['run_id']}'")
    assert sorted(run["info"]["run_id"] for run in pipelines) == sorted(row["mlflow_run_id"] for row in rows.values())
    for pipeline in pipelines:
        stages = stack.runs(f"tags.`mlflow.parentRunId` = '{pipeline['info']['run_id']}'")
        assert sorted(run["info"]["run_name"] for run in stages) == sorted(STAGES)
        assert all(run["info"]["status"] == "FINISHED" for run in [pipeline, *stages])
    starts = [int(run["info"]["start_time"]) for run in pipelines]
    ends = [int(run["info"]["end_time"]) for run in pipelines]
    assert max(starts) < min(ends), "the two sweep points did not run at the same time"
    for row in rows.values():
        workdir = root / ".multistage" / "sweeps" / SWEEP / f"betatcvae-beta{row['beta']:g}-seed0"
        assert (workdir / "report" / "index.html").exists()


def test_stage_two_models_registered_with_newest_and_best_aliases(stack, pipeline_runs, sweep_run):
    """Every distinct stage-two model file is one version; 'best' is the lowest Fréchet distance on X-hat (the
    registry section of the tiny params), checked against the runs' own metrics files."""
    root = stack.root
    workdirs = [root, *sorted((root / ".multistage" / "sweeps" / SWEEP).iterdir())]
    scored = {}
    for workdir in workdirs:
        digest = file_digest(workdir / "models" / "stage_two" / "msvae" / "model.pt")
        value = json.loads((workdir / "metrics" / "evaluate.json").read_text())["frechet.factor_classifier.x_hat"]
        scored[digest] = value
    query = urllib.parse.quote(f"name = '{MODEL_NAME}'")
    versions = stack.mlflow_api(f"model-versions/search?filter={query}")["model_versions"]
    by_digest = {}
    for version in versions:
        version_tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        by_digest[version_tags["multistage.model_digest"]] = (
            version["version"],
            float(version_tags["multistage.metric_value"]),
        )
    assert sorted(by_digest) == sorted(scored)
    for digest, (_, value) in by_digest.items():
        assert value == pytest.approx(scored[digest])

    alias = lambda name: stack.mlflow_api(  # noqa: E731
        f"registered-models/alias?name={MODEL_NAME}&alias={name}"
    )["model_version"]
    best = alias("best")
    lowest = min(scored.values())  # ties (the beta-2 point repeats the first run's scores): the newest version
    assert int(best["version"]) == max(int(by_digest[d][0]) for d, value in scored.items() if value == lowest)
    newest = alias("newest")
    sweep_digests = {file_digest(w / "models" / "stage_two" / "msvae" / "model.pt") for w in workdirs[1:]}
    assert newest["version"] in {by_digest[d][0] for d in sweep_digests}
    # a version's source is a real artifact: the model file itself
    model = request(f"{stack.mlflow}/get-artifact?path=stage_two_model/model.pt&run_uuid={best['run_id']}")
    assert scored[hashlib.md5(model).hexdigest()] == lowest
