"""The evaluate stage's wiring of the metric suite: params validation, the factor-set scores with and without
ground truth (skipped metrics leave a note), JointVAE's discrete codes, and NaN codes as one clear error."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from multistage.evaluation.factor_set import factor_set_scores
from multistage.evaluation.registry import METRICS
from multistage.evaluation.representation import EvaluationInputError, representation_from_codes, timer
from stages.common import ParamsError, validate_section
from stages.evaluate import ALL_METRICS, EvaluateParams, evaluation_config
from stages.train_stage_one import encode_all
from tests.conftest import TINY_PARAMS

SIZES = (3, 6, 10)
NAMES = ("shape", "scale", "position")


class PixelEncoder(torch.nn.Module):
    """A stand-in stage-one model whose posterior mean is read off the first pixels (one latent per factor, plus a
    collapsed unit), with a fixed posterior std; optionally one discrete code of 3 categories (JointVAE layout), and
    NaN in row ``nan_row`` of every batch."""

    def __init__(self, discrete: bool = False, nan_row: int | None = None) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(latent_dim=4)
        self.discrete_dims = (3,) if discrete else ()
        self.nan_row = nan_row
        self.code_names = ["z0", "z1", "z2", "z3"] + (["c0=0", "c0=1", "c0=2"] if discrete else [])

    def posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = x[:, 0, 0, :3].double() * 255.0
        mu = torch.cat(
            [values / torch.tensor(SIZES, dtype=torch.float64), torch.zeros(len(x), 1, dtype=torch.float64)], 1
        )
        if self.nan_row is not None and self.nan_row < len(x):
            mu[self.nan_row, 1] = float("nan")
        posterior = {"mu": mu, "logvar": torch.full_like(mu, float(np.log(0.01**2)))}
        if self.discrete_dims:
            posterior["logits"] = 10.0 * torch.nn.functional.one_hot(values[:, 0].long(), 3).double()
        return posterior


def factor_dataset(ground_truth: bool = True, count: int = 1200):
    rng = np.random.default_rng(0)
    classes = np.stack([rng.integers(0, size, count) for size in SIZES], axis=1)
    images = np.zeros((count, 1, 4, 4), dtype=np.uint8)
    images[:, 0, 0, :3] = classes
    return types.SimpleNamespace(
        images=images,
        factor_classes=classes if ground_truth else np.zeros((count, 0), dtype=np.int64),
        factor_names=NAMES if ground_truth else (),
        factor_sizes=SIZES if ground_truth else (),
        has_ground_truth=ground_truth,
        meta={"dataset": "stand-in"},
        count=count,
    )


class Sized(types.SimpleNamespace):
    def __len__(self) -> int:
        return self.count


def small_params(**overrides) -> EvaluateParams:
    raw = {**TINY_PARAMS["evaluate"], **overrides}
    return validate_section(EvaluateParams, raw, "evaluate")


def run_factor_set(dataset, model, params: EvaluateParams, ground_truth: bool) -> dict:
    scores: dict = {}

    def encode(model, rows, batch_size):
        return encode_all(model, rows, torch.device("cpu"), batch_size)

    result = factor_set_scores(
        evaluation_config(params), Sized(**vars(dataset)), model, encode, ground_truth, timer(scores)
    )
    return result | scores


def test_factor_set_scores_with_ground_truth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/stage_one/codes.parquet here: the codes are encoded
    result = run_factor_set(factor_dataset(), PixelEncoder(), small_params(), ground_truth=True)
    assert result["factor_set.images"] == 1200
    assert result["x.mig.sampling"] > 0.95 and result["x.mig.sampling.no_shape"] > 0.95
    assert result["x.sap"] > 0.6 and result["x.factorvae_score"] > 0.9
    assert 0.2 < result["x.zdiff"] <= 1.0  # tiny settings (8 pairs, 100 points): far from converged
    assert result["x.dci.lasso.disentanglement"] > 0.9
    assert result["indicators.used_dimensions"] == 3  # the collapsed fourth unit carries nothing
    assert "tc_decomposition.total_correlation" in result
    assert all(f"evaluate.seconds.{group}" in result for group in ("mig_sampling", "sap", "zdiff", "dci"))


def test_factor_set_scores_without_ground_truth_keep_the_other_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = factor_dataset(ground_truth=False)
    result = run_factor_set(dataset, PixelEncoder(), small_params(), ground_truth=False)
    assert not any(key.startswith("x.") for key in result)
    assert "tc_decomposition.index_code_mi" in result and "indicators.encoder_mi" in result


def test_one_varying_factor_skips_the_metrics_that_classify_factors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = factor_dataset()
    dataset.factor_classes = dataset.factor_classes.copy()
    dataset.factor_classes[:, 1:] = 0  # only the shape varies
    result = run_factor_set(
        dataset, PixelEncoder(), small_params(metrics=["zdiff", "factorvae_score", "sap"]), ground_truth=True
    )
    assert result["skipped.zdiff"].startswith("needs at least two factors that vary")
    assert "skipped.factorvae_score" in result and "x.zdiff" not in result and "x.factorvae_score" not in result
    assert result["x.sap.shape"] > 0.5 and np.isnan(result["x.sap.scale"])


def test_discrete_code_accuracy_and_representation_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_factor_set(
        factor_dataset(), PixelEncoder(discrete=True), small_params(metrics=["indicators"]), ground_truth=True
    )
    assert result["x.discrete.c0.accuracy.shape"] == 1.0  # the discrete code is the shape, relabelled
    assert result["x.discrete.c0.accuracy.scale"] < 0.5
    assert result["x.discrete.c0.majority_accuracy.shape"] == 1.0
    assert result["x.discrete.c0.mutual_information"] > 0.5 and result["x.discrete.c0.values_used"] == 3
    mu = np.zeros((2, 1))
    alpha = np.array([[0.1, 0.7, 0.2, 0.9, 0.1], [0.6, 0.3, 0.1, 0.2, 0.8]])
    np.testing.assert_array_equal(
        representation_from_codes(mu, alpha, (3, 2)), [[0, 0, 1, 0, 1, 0], [0, 1, 0, 0, 0, 1]]
    )


def test_discrete_code_baselines_cluster_pixels_and_code_for_the_factors_a_code_can_find(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = factor_dataset()
    rows = np.arange(dataset.count)
    dataset.images[rows, 0, 3, dataset.factor_classes[:, 0]] = 255  # the shape drawn as a bright pixel of its own
    result = run_factor_set(dataset, PixelEncoder(discrete=True), small_params(metrics=["indicators"]), True)
    # the pixels separate the three shapes by far more than anything else varies: k-means finds them
    assert result["x.discrete.kmeans_pixels.accuracy.shape"] == 1.0
    assert result["x.discrete.kmeans_pixels.majority_accuracy.shape"] == 1.0
    # the continuous code holds shape / 3 beside scale / 6 and position / 10 at the same spread: k-means mixes them
    assert result["x.discrete.kmeans_code.accuracy.shape"] < 0.8
    # only factors with as many classes as a discrete code has values (3: the shape) get a baseline
    assert not any(".scale" in key or ".position" in key for key in result if "kmeans" in key)
    assert "evaluate.seconds.discrete_baselines" in result


def test_nan_codes_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        EvaluationInputError, match="NaN or infinite mu for 40 of 1200 images of the factor set.*retrain"
    ):
        run_factor_set(factor_dataset(), PixelEncoder(nan_row=5), small_params(), ground_truth=True)


def test_evaluate_params_are_validated():
    assert EvaluateParams().metrics == ALL_METRICS and EvaluateParams().dci.regressor == "lasso"
    with pytest.raises(ParamsError, match=r"evaluate\.dci\.regressor.*'lasso', 'gbt'"):
        small_params(dci={"regressor": "forest"})
    with pytest.raises(ParamsError, match=r"evaluate\.metrics\.0"):
        small_params(metrics=["mig_sampling_typo"])
    with pytest.raises(ParamsError, match=r"unknown key 'evaluate\.zdiff\.batch'"):
        small_params(zdiff={"batch": 3})
    with pytest.raises(ParamsError, match=r"evaluate\.mig_sampling\.level_ratio"):
        small_params(mig_sampling={"level_ratio": 1.0})


def test_params_are_derived_from_the_config_dataclasses():
    """Every registered metric's sub-section has its config dataclass's keys and defaults; values set in params
    reach the metric's config."""
    import dataclasses

    defaults = EvaluateParams()
    for name, metric in METRICS.items():
        fields = {field.name: field.default for field in dataclasses.fields(metric.config)}
        if fields:
            section = getattr(defaults, name).model_dump()
            assert section == {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    config = evaluation_config(small_params(sap={"images": 50}, downstream={"hidden_units": [4, 4]}))
    assert config.config_of("sap") == METRICS["sap"].config(images=50)
    assert config.config_of("downstream").hidden_units == (4, 4) and config.exclude_factors == ("shape",)
    with pytest.raises(ParamsError, match=r"bad value for 'evaluate\.sap\.images'"):
        small_params(sap={"images": 3})


def test_the_registry_holds_one_signature_and_refuses_bad_entries():
    import inspect

    from multistage.evaluation.registry import Metric, MetricInputs, register

    for metric in METRICS.values():
        assert list(inspect.signature(metric.function).parameters) == ["inputs", "config", "seed"], metric.name
        metric.config()  # every setting has a default
    with pytest.raises(ValueError, match="registered twice"):
        register(METRICS["sap"])
    with pytest.raises(TypeError, match="must be a dataclass"):
        Metric("bad", METRICS["sap"].function, dict, "factor_set")
    with pytest.raises(ValueError, match="unknown needs"):
        Metric("bad", METRICS["sap"].function, METRICS["sap"].config, "factor_set", frozenset({"gpu"}))
    features = np.random.default_rng(0).normal(size=(40, 3))
    scores = METRICS["kid"](MetricInputs(features=features, other_features=features + 1.0, label="y"), seed=0)
    assert set(scores) == {"kid.factor_classifier.y", "kid.factor_classifier.y.std"}
    assert scores["kid.factor_classifier.y"] > 0.1
