"""A real `dvc repro` of the whole pipeline on tiny params, its MLflow store, what DVC reruns, and `dvc metrics diff`
between two commits (the runs are the shared session fixtures of tests/conftest.py)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from stages.common import file_digest
from tests.conftest import sh

pytestmark = pytest.mark.e2e

STAGES = ["check_params", "prepare", "stage_one", "pairs", "stage_two@msvae", "evaluate", "report"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_dvc_repro_end_to_end(dvc_baseline):
    tiny_repo, first = dvc_baseline.root, dvc_baseline.first
    assert ran_stages(first.stdout) == STAGES
    # the closing summary: score table, MLflow UI command, report path
    assert "Final scores" in first.stdout and "M2 = MI[C_R; C_X-hat]" in first.stdout
    assert "make ui   # i.e. .venv/bin/mlflow server --backend-store-uri sqlite:///" in first.stdout
    assert (tiny_repo / "report" / "index.html").exists()
    page = (tiny_repo / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "conditioning.M1" in page

    scores = dvc_baseline.first_scores
    for key in (
        "x.mig.histogram20",
        "y.mig.histogram20",
        "x_hat.mig.histogram20",
        "x.mig.histogram20.no_shape",
        "frechet.factor_classifier.y",
        "frechet.factor_classifier.x_hat",
        "reconstruction.x_hat.bce",
        "conditioning.M1",
        "conditioning.M2",
        "conditioning.M3",
        "conditioning.M4",
        "classifier.accuracy.mean",
    ):
        assert key in scores and scores[key] == scores[key], key  # present and not NaN
    curves = json.loads((tiny_repo / "plots" / "stage_one_curves.json").read_text())
    assert [r["step"] for r in curves] == [4, 8, 12]
    assert {"loss", "recon", "index_code_mi", "tc", "dim_kl", "images_per_second"} <= set(curves[0])

    # the MLflow store: one parent, one child per stage, per-step metrics, figures and checkpoints
    database = sqlite3.connect(tiny_repo / "mlruns.db")
    runs = dict(database.execute("select run_uuid, name from runs").fetchall())
    parents = database.execute(
        "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'multistage.stage' and t.value = 'pipeline'"
    ).fetchall()
    assert len(parents) == 1
    parent = parents[0][0]
    parent_scores = dict(
        database.execute("select key, value from latest_metrics where run_uuid = ?", (parent,)).fetchall()
    )
    assert parent_scores["conditioning.M1"] == pytest.approx(scores["conditioning.M1"])
    children = database.execute(
        "select run_uuid from tags where key = 'mlflow.parentRunId' and value = ?", (parent,)
    ).fetchall()
    assert sorted(runs[c] for (c,) in children) == sorted(s for s in STAGES if s != "check_params")  # a check, no run
    stage_one = next(c for (c,) in children if runs[c] == "stage_one")
    steps = database.execute(
        "select step from metrics where run_uuid = ? and key = 'train.loss' order by step", (stage_one,)
    ).fetchall()
    assert [s for (s,) in steps] == [4, 8, 12]
    evaluate = next(c for (c,) in children if runs[c] == "evaluate")
    logged = dict(database.execute("select key, value from latest_metrics where run_uuid = ?", (evaluate,)).fetchall())
    assert logged["conditioning.M2"] == pytest.approx(scores["conditioning.M2"])
    tags = dict(database.execute("select key, value from tags where run_uuid = ?", (stage_one,)).fetchall())
    assert tags["DVC_STAGE"] == "stage_one" and len(tags["git_commit"]) == 40
    assert tags["device"] == "cpu" and "CUDA_VISIBLE_DEVICES" in tags  # chosen by select_device, recorded
    assert tags["torch.threads"] == "1"  # runtime.threads of the tiny params: scores repeat at this thread count
    artifacts = {p.name for p in (tiny_repo / "mlartifacts").rglob("*") if p.is_file()}
    assert {"model.pt", "reconstructions.png", "traversal_y.png", "traversal_x_hat.png", "index.html"} <= artifacts

    # a second repro does nothing
    assert ran_stages(dvc_baseline.second.stdout) == []


def test_dvc_metrics_show_prints_the_headline_only(dvc_baseline):
    """`dvc metrics show` lists the headline file (a few numbers), not the full score set, which stays a tracked
    output beside it."""
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], dvc_baseline.root).stdout)
    workspace = shown.get("workspace") or shown[""]  # DVC names the workspace "" or "workspace"
    files = {name: entry["data"] for name, entry in workspace["data"].items()}
    assert set(files) == {"metrics/headline.json"}
    headline = files["metrics/headline.json"]
    scores = json.loads((dvc_baseline.root / "metrics" / "evaluate.json").read_text())  # the full set, as an out
    assert 15 <= len(headline) <= 25 and headline["conditioning.M2"] == scores["conditioning.M2"]
    assert all(isinstance(value, (int, float)) for value in headline.values())
    assert sum(len(data) for data in files.values()) <= 25  # the columns the table prints


def test_every_metrics_and_plots_file_of_the_pipeline_is_strict_json(dvc_baseline):
    """RFC 8259 JSON: no NaN or Infinity (a value that could not be computed is null)."""

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    files = [
        *sorted((dvc_baseline.root / "metrics").glob("*.json")),
        *sorted((dvc_baseline.root / "plots").glob("*.json")),
    ]
    assert {"stage_one.json", "evaluate.json", "stage_one_curves.json"} <= {path.name for path in files}
    for path in files:
        json.loads(path.read_text(), parse_constant=refuse)


def test_param_change_reruns_downstream_and_metrics_diff_between_commits(dvc_baseline):
    """Commit 1: the baseline; commit 2: stage_two.msvae.beta 1 -> 4, which reran exactly stage two and what
    follows."""
    root, commits = dvc_baseline.root, dvc_baseline.commits
    assert ran_stages(dvc_baseline.stage_two_repro.stdout) == ["check_params", "stage_two@msvae", "evaluate", "report"]
    diff = json.loads(
        sh(["dvc", "metrics", "diff", commits["baseline"], commits["stage_two_beta"], "--json"], root).stdout
    )
    changed = diff["metrics/headline.json"]
    assert changed["reconstruction.x_hat.l1"]["diff"] != 0  # stage two changed, so X-hat did
    assert "x.mig.histogram20" not in changed and "reconstruction.y.l1" not in changed  # stage one did not
    params = json.loads(
        sh(["dvc", "params", "diff", commits["baseline"], commits["stage_two_beta"], "--json"], root).stdout
    )
    assert {k: params["params.yaml"]["stage_two.msvae.beta"][k] for k in ("old", "new")} == {"old": 1.0, "new": 4.0}


def test_each_stage_two_model_is_registered_with_newest_and_best(dvc_baseline, tmp_path):
    """Two runs of the report stage with different stage-two models (stage_two.msvae.beta 1, then 4): two versions;
    'newest' is the second, 'best' the one with the lower Fréchet distance on X-hat (the tiny registry section)."""
    root = dvc_baseline.root
    database = sqlite3.connect(root / "mlruns.db")
    versions = dict(
        database.execute(
            "select version, value from model_version_tags where key = 'multistage.metric_value'"
        ).fetchall()
    )
    assert sorted(versions) == [1, 2]
    values = [
        dvc_baseline.first_scores["frechet.factor_classifier.x_hat"],
        json.loads((root / "metrics" / "evaluate.json").read_text())["frechet.factor_classifier.x_hat"],
    ]
    assert [float(versions[1]), float(versions[2])] == pytest.approx(values)
    aliases = dict(database.execute("select alias, version from registered_model_aliases").fetchall())
    assert aliases == {"newest": 2, "best": 1 + values.index(min(values))}
    # the README's way to fetch a model: the newest is the stage-two model now in the workspace
    script = (
        "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
        "print(mlflow.artifacts.download_artifacts('models:/multistage-stage-two@newest', dst_path=sys.argv[2]))"
    )
    folder = sh(["python", "-c", script, f"sqlite:///{root / 'mlruns.db'}", str(tmp_path / "newest")], root)
    downloaded = Path(folder.stdout.strip().splitlines()[-1]) / "model.pt"
    assert file_digest(downloaded) == file_digest(root / "models" / "stage_two" / "msvae" / "model.pt")
