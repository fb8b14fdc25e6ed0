"""Edge cases that good models produce, against independent computations of the published definitions: a code at
another scale, duplicated latents, a perfect code (SAP: DIP-VAE sec. 3; DCI: Eastwood and Williams 2018, with
disentanglement_lib's absolute importances; MIG: beta-TCVAE sec. 5; the FactorVAE score: FactorVAE sec. 4)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from multistage.metrics.dci import dci
from multistage.metrics.factorvae_score import factorvae_score
from multistage.metrics.mig import mutual_information_gap
from multistage.metrics.sap import sap_score

NAMES = ("shape", "scale", "orientation")
SIZES = (3, 6, 10)


def draw_factors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, count) for size in SIZES], axis=1)


def reference_sap(codes: np.ndarray, factors: np.ndarray) -> float:
    """Every factor continuous, no latent pruned except constant ones: S_ij = Cov(z_i, v_j)^2 / (Var z_i Var v_j),
    SAP = mean over factors of the top-two gap."""
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            covariance = np.cov(codes[:, i], factors[:, j], ddof=1)
            if covariance[0, 0] > 1e-12:
                scores[i, j] = covariance[0, 1] ** 2 / (covariance[0, 0] * covariance[1, 1])
    ordered = np.sort(scores, axis=0)
    return float(np.mean(ordered[-1] - ordered[-2]))


@pytest.fixture(scope="module")
def perfect():
    factors = draw_factors(3000, 0)
    codes = (factors - factors.mean(0)) / factors.std(0) + np.random.default_rng(1).normal(0, 0.05, factors.shape)
    return codes, factors


def test_sap_does_not_depend_on_the_code_scale(perfect):
    codes, factors = perfect
    unscaled = sap_score(codes, factors, NAMES)["sap"]
    assert unscaled > 0.95
    for scale in (0.05, 0.001, 40.0):
        assert sap_score(scale * codes, factors, NAMES)["sap"] == pytest.approx(unscaled, abs=1e-9)
    assert unscaled == pytest.approx(reference_sap(codes, factors), abs=1e-6)
    assert reference_sap(0.05 * codes, factors) == pytest.approx(unscaled, abs=1e-6)


def test_sap_prunes_latents_relative_to_the_largest_and_scores_duplicates_zero(perfect):
    codes, factors = perfect
    faint = np.concatenate([codes, 1e-3 * np.random.default_rng(2).normal(size=(len(codes), 1))], axis=1)
    assert sap_score(faint, factors, NAMES)["sap"] == pytest.approx(sap_score(codes, factors, NAMES)["sap"])
    # each factor held by two identical latents: the top two entries are equal, so every gap is 0
    duplicated = np.concatenate([codes, codes], axis=1)
    assert sap_score(duplicated, factors, NAMES)["sap"] == pytest.approx(0.0, abs=1e-12)
    assert reference_sap(duplicated, factors) == pytest.approx(0.0, abs=1e-12)


def reference_dci(train_codes, train_factors) -> tuple[float, float]:
    """D and C from absolute tree importances, entropies written with np.log."""
    importance = np.stack(
        [
            np.abs(
                GradientBoostingClassifier(n_estimators=8, random_state=0)
                .fit((train_codes - train_codes.mean(0)) / train_codes.std(0), column)
                .feature_importances_
            )
            for column in train_factors.T
        ],
        axis=1,
    )

    def one_minus_entropy(rows: np.ndarray, base: int) -> np.ndarray:
        p = rows / rows.sum(axis=1, keepdims=True)
        logs = np.log(np.where(p > 0, p, 1.0))
        return 1.0 + (p * logs).sum(axis=1) / np.log(base)

    total = importance.sum()
    d = float((one_minus_entropy(importance, importance.shape[1]) * importance.sum(1) / total).sum())
    c = float((one_minus_entropy(importance.T, importance.shape[0]) * importance.sum(0) / total).sum())
    return d, c


def test_dci_trees_on_duplicated_latents_are_finite_and_match_the_reference():
    # on this input scikit-learn gives one importance a rounding error below zero (-1e-19 or so)
    train, test = draw_factors(200, 0), draw_factors(100, 1)
    train_codes = np.concatenate([train, train], axis=1).astype(float)
    test_codes = np.concatenate([test, test], axis=1).astype(float)
    scores = dci(train_codes, train, test_codes, test, NAMES, "gbt", gbt_estimators=8)
    d, c = scores["dci.gbt.disentanglement"], scores["dci.gbt.completeness"]
    assert np.isfinite(d) and np.isfinite(c)
    reference_d, reference_c = reference_dci(train_codes, train)
    assert d == pytest.approx(reference_d, abs=1e-9) and c == pytest.approx(reference_c, abs=1e-9)
    assert d > 0.9  # each unit predicts one factor
    assert c == pytest.approx(1 - np.log(2) / np.log(6), abs=0.1)  # each factor split over its two copies


def test_mig_does_not_depend_on_the_code_scale(perfect):
    codes, factors = perfect
    unscaled = mutual_information_gap(codes, factors, NAMES)["mig.histogram20"]
    assert unscaled > 0.5
    assert mutual_information_gap(0.05 * codes, factors, NAMES)["mig.histogram20"] == pytest.approx(unscaled)
    duplicated = np.concatenate([codes, codes], axis=1)
    assert mutual_information_gap(duplicated, factors, NAMES)["mig.histogram20"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("regressor", ["gbt", "lasso"])
def test_dci_does_not_depend_on_the_code_scale(perfect, regressor):
    # trees split on thresholds and the lasso sees standardised codes, so a code at another scale scores the same
    codes, factors = perfect
    train, test = slice(0, 600), slice(600, 900)

    def scores(scale: float) -> dict[str, float]:
        scaled = scale * codes
        return dci(scaled[train], factors[train], scaled[test], factors[test], NAMES, regressor, gbt_estimators=8)

    unscaled = scores(1.0)
    assert unscaled[f"dci.{regressor}.disentanglement"] > 0.8  # one unit per factor
    for scale in (0.05, 40.0):
        for key, value in scores(scale).items():
            assert value == pytest.approx(unscaled[key], abs=1e-6), (scale, key)


def test_factorvae_score_scales_with_its_code_only_through_the_pruning_threshold(perfect):
    # the majority vote reads each latent divided by its standard deviation (FactorVAE sec. 4), so a code at another
    # scale scores the same; the published protocol's pruning (latents with std < 0.05) is an absolute threshold, so
    # a code scaled below it loses every latent, as in disentanglement_lib
    codes, factors = perfect

    def score(scale: float, inactive_variance: float = 0.0) -> dict[str, float]:
        return factorvae_score(scale * codes, factors, NAMES, 64, 600, 300, inactive_variance=inactive_variance)

    unscaled = score(1.0)
    assert unscaled["factorvae_score"] > 0.95
    for scale in (0.05, 40.0):
        assert score(scale)["factorvae_score"] == pytest.approx(unscaled["factorvae_score"])
    pruned = score(0.01, inactive_variance=0.05**2)  # every unit's std is about 0.01
    assert pruned["factorvae_score.active_latents"] == 0 and pruned["factorvae_score"] == 0.0
    assert score(1.0, inactive_variance=0.05**2)["factorvae_score"] == pytest.approx(unscaled["factorvae_score"])
