"""The registry's ``best`` alias in a real SQLite MLflow store: versions filed by ``register_model_version`` with
their metric, ``best`` moved by ``refresh_best_alias``, and a sweep settling ``best`` for ``frechet.headline``
with the key the versions were filed under (the detail network's Fréchet distance on data with nuisance)."""

from __future__ import annotations

import pytest

from pipeline import sweep
from stages import tracking

NAME = "multistage-stage-two"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv(tracking.EXPERIMENT_VARIABLE, "registry-test")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def file_versions(store, metric: str, values: list[float]) -> list[str]:
    versions = []
    for index, value in enumerate(values):
        model = store / f"model{index}.pt"
        model.write_bytes(f"model {index}".encode())
        with tracking.stage_run("report") as handle:
            versions.append(tracking.register_model_version(handle, model, NAME, f"digest{index}", metric, value))
    return versions


def params(best_metric: str) -> dict:
    return {"registry": {"model_name": NAME, "best_metric": best_metric, "best_is": "lower"}}


def test_best_is_the_lowest_of_the_metric_filed_and_headline_resolves_to_it(store):
    detail = "frechet.detail_classifier.x_hat"
    assert tracking.filed_metric(NAME) is None  # no model yet
    versions = file_versions(store, detail, [3.0, 1.0, 2.0])
    assert tracking.filed_metric(NAME) == detail  # the newest version's
    assert tracking.refresh_best_alias(NAME, detail, higher_is_better=False) == versions[1]
    assert tracking.refresh_best_alias(NAME, detail, higher_is_better=True) == versions[0]
    # no version was filed with the shape-only key, so there is no best by it
    assert tracking.refresh_best_alias(NAME, "frechet.factor_classifier.x_hat", False) is None
    # a sweep names the headline; the versions carry the resolved key, which the sweep reads back
    assert sweep._refresh_best(params("frechet.headline")) == versions[1]
    assert sweep._refresh_best(params("frechet.factor_classifier.x_hat")) is None
