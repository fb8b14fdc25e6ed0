"""The dSprites benchmark as a real Prefect flow run (ephemeral API, temporary PREFECT_HOME, a real MLflow store):
two models, tiny sizes, points trained and scored by the protocol, merged into the summary, table and figure."""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from tests.conftest import PROJECT, ephemeral_prefect_env, sh

pytestmark = pytest.mark.e2e

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pipeline.benchmark import multistage_benchmark

    root = sys.argv[1]
    small = {
        "prepare.n_images": 1200,
        "evaluate.sap": {"images": 300, "test_images": 200, "protocol": "disentanglement_lib"},
        "evaluate.dci": {"regressor": "gbt", "train_images": 300, "test_images": 200, "gbt_estimators": 2},
        "evaluate.factorvae_score": {"batch_size": 16, "train_votes": 40, "eval_votes": 20, "variance_images": 300,
                                     "inactive_variance": 0.05},
    }
    result = multistage_benchmark(
        models=["betatcvae", "factorvae"], seeds=[0], steps=3, overrides=small, factor_images=0, threads=1,
        concurrency=2, out_dir=f"{root}/points", work=f"{root}/work", summary=f"{root}/summary.json",
        figure=f"{root}/benchmark.png", data_root=f"{root}/data", name="tiny",
    )
    print(json.dumps(result))
    """
)


def test_benchmark_flow_trains_scores_merges_and_tracks(tmp_path):
    env = ephemeral_prefect_env(PROJECT, tmp_path / "prefect-home")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    completed = sh(["python", "-c", SCRIPT, str(tmp_path)], PROJECT, env=env, timeout=600)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["points"] == 2

    summary = json.loads((tmp_path / "summary.json").read_text())
    for model in ("betatcvae", "factorvae"):
        assert len(summary[f"{model}.mig_seeds"]) == 1
        assert 0.0 <= summary[f"{model}.mig_median"] <= 1.0
        assert set(summary[f"{model}.per_factor_mig"]) == {"shape", "scale", "orientation", "posX", "posY"}
        assert f"{model}.factorvae_score_median" in summary and f"{model}.dci_disentanglement_median" in summary
        point = json.loads((tmp_path / "points" / f"{model}-s0.json").read_text())
        assert (
            point["steps"] == 3 and point["factor_images"] == 1200 and point["protocol"]["dci"]["gbt_estimators"] == 2
        )
        assert point["stage_one"]["latent_dim"] == 10 and point["stage_one"]["batch_size"] == 64
    table = (tmp_path / "summary.md").read_text()
    assert "| beta-TCVAE | 1 | 3 |" in table and "| FactorVAE |" in table
    assert (tmp_path / "benchmark.png").stat().st_size > 10000

    database = sqlite3.connect(tmp_path / "mlruns.db")
    run = database.execute("select run_uuid from tags where key = 'multistage.benchmark' and value = 'tiny'").fetchone()
    metrics = dict(database.execute("select key, value from latest_metrics where run_uuid = ?", run).fetchall())
    assert metrics["betatcvae.mig_median"] == pytest.approx(summary["betatcvae.mig_median"])
