"""A real Prefect flow run of the same pipeline (ephemeral Prefect API in a temporary PREFECT_HOME), its MLflow
runs, and task caching on a second identical run."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from tests.conftest import sh

pytestmark = pytest.mark.e2e

SCRIPT = textwrap.dedent(
    """
    import json
    from pipeline.flow import multistage_pipeline

    flows = []
    for attempt in range(2):
        state = multistage_pipeline(return_state=True)
        result = state.result()
        flows.append({"flow": state.type.value, "parent": result["parent_run_id"], "tasks": result["task_states"]})
    print(json.dumps({"flows": flows}))
    """
)


def test_prefect_flow_runs_caches_and_tracks(tiny_repo, tmp_path):
    from tests.conftest import ephemeral_prefect_env

    env = ephemeral_prefect_env(tiny_repo, tmp_path / "prefect-home")
    completed = sh(["python", "-c", SCRIPT], tiny_repo, env=env, timeout=900)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [f["flow"] for f in report["flows"]] == ["COMPLETED", "COMPLETED"]
    stages = ["prepare", "stage_one", "pairs", "stage_two@msvae", "evaluate", "report"]
    assert report["flows"][0]["tasks"] == {stage: "Completed" for stage in stages}
    assert report["flows"][1]["tasks"] == {stage: "Cached" for stage in stages}

    # the first flow run logged a parent run with one child per stage, with metrics
    database = sqlite3.connect(tiny_repo / "mlruns.db")
    parent = report["flows"][0]["parent"]
    children = dict(
        database.execute(
            "select r.name, r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'mlflow.parentRunId' and t.value = ?",
            (parent,),
        ).fetchall()
    )
    assert sorted(children) == sorted(stages)
    metrics = dict(
        database.execute("select key, value from latest_metrics where run_uuid = ?", (children["evaluate"],)).fetchall()
    )
    assert "conditioning.M3" in metrics and "x_hat.mig.histogram20" in metrics
    assert (tiny_repo / "report" / "index.html").exists()
    assert json.loads((tiny_repo / "metrics" / "evaluate.json").read_text())["evaluate.images"] == 60
