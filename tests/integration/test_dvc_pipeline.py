"""A real `dvc repro` of the whole pipeline on tiny params, its MLflow store, and what DVC reruns."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import yaml

from tests.conftest import TINY_PARAMS, sh, write_params

pytestmark = pytest.mark.e2e

STAGES = ["prepare", "stage_one", "pairs", "stage_two", "evaluate", "report"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_dvc_repro_end_to_end(tiny_repo):
    first = sh(["python", "-m", "pipeline.repro"], tiny_repo)
    assert ran_stages(first.stdout) == STAGES
    # the closing summary: score table, MLflow UI command, report path
    assert "Final scores" in first.stdout and "M2 = MI[C_R; C_X-hat]" in first.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in first.stdout
    assert (tiny_repo / "report" / "index.html").exists()
    page = (tiny_repo / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "conditioning.M1" in page

    scores = json.loads((tiny_repo / "metrics" / "evaluate.json").read_text())
    for key in ("x.mig.histogram20", "y.mig.histogram20", "x_hat.mig.histogram20", "x.mig.histogram20.no_shape",
                "frechet.factor_classifier.y", "frechet.factor_classifier.x_hat", "reconstruction.x_hat.bce",
                "conditioning.M1", "conditioning.M2", "conditioning.M3", "conditioning.M4",
                "classifier.accuracy.mean"):
        assert key in scores and scores[key] == scores[key], key  # present and not NaN
    curves = json.loads((tiny_repo / "plots" / "stage_one_curves.json").read_text())
    assert [r["step"] for r in curves] == [4, 8, 12]
    assert {"loss", "recon", "index_code_mi", "tc", "dim_kl", "images_per_second"} <= set(curves[0])

    # the MLflow store: one parent, one child per stage, per-step metrics, figures and checkpoints
    database = sqlite3.connect(tiny_repo / "mlruns.db")
    runs = dict(database.execute("select run_uuid, name from runs").fetchall())
    parents = database.execute(
        "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'multistage.stage' and t.value = 'pipeline'").fetchall()
    assert len(parents) == 1
    parent = parents[0][0]
    parent_scores = dict(database.execute("select key, value from latest_metrics where run_uuid = ?",
                                          (parent,)).fetchall())
    assert parent_scores["conditioning.M1"] == pytest.approx(scores["conditioning.M1"])
    children = database.execute(
        "select run_uuid from tags where key = 'mlflow.parentRunId' and value = ?", (parent,)).fetchall()
    assert sorted(runs[c] for (c,) in children) == sorted(STAGES)
    stage_one = next(c for (c,) in children if runs[c] == "stage_one")
    steps = database.execute(
        "select step from metrics where run_uuid = ? and key = 'train.loss' order by step", (stage_one,)).fetchall()
    assert [s for (s,) in steps] == [4, 8, 12]
    evaluate = next(c for (c,) in children if runs[c] == "evaluate")
    logged = dict(database.execute(
        "select key, value from latest_metrics where run_uuid = ?", (evaluate,)).fetchall())
    assert logged["conditioning.M2"] == pytest.approx(scores["conditioning.M2"])
    tags = dict(database.execute("select key, value from tags where run_uuid = ?", (stage_one,)).fetchall())
    assert tags["DVC_STAGE"] == "stage_one" and len(tags["git_commit"]) == 40
    artifacts = {p.name for p in (tiny_repo / "mlartifacts").rglob("*") if p.is_file()}
    assert {"model.pt", "reconstructions.png", "traversal_y.png", "traversal_x_hat.png", "index.html"} <= artifacts

    # a second repro does nothing
    second = sh(["dvc", "repro"], tiny_repo)
    assert ran_stages(second.stdout) == []

    # commit, change one stage-two param: only stage two and what follows rerun; metrics diff shows the change
    sh(["git", "add", "-A"], tiny_repo)
    sh(["git", "commit", "-q", "-m", "tiny run"], tiny_repo)
    params = json.loads(json.dumps(TINY_PARAMS))
    params["stage_two"]["beta"] = 4.0
    write_params(tiny_repo, params)
    third = sh(["dvc", "repro"], tiny_repo)
    assert ran_stages(third.stdout) == ["stage_two", "evaluate", "report"]
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], tiny_repo).stdout)
    changed = diff["metrics/evaluate.json"]
    assert changed["reconstruction.x_hat.l1"]["diff"] != 0  # stage two changed, so X-hat did
    assert "x.mig.histogram20" not in changed and "reconstruction.y.l1" not in changed  # stage one did not
    assert yaml.safe_load((tiny_repo / "params.yaml").read_text())["stage_two"]["beta"] == 4.0
