"""SAP by disentanglement_lib's protocol (linear SVMs on one latent, disjoint train and test rows), on codes with
known answers and against an independent computation of the same definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from multistage.evaluation.registry import METRICS, MetricInputs
from multistage.metrics.sap import SapConfig, sap_from_matrix, sap_svm_score_matrix

NAMES = ("shape", "size")


def factors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 2, count), rng.integers(0, 3, count)], axis=1)


def reference(train_codes, train_y, test_codes, test_y) -> float:
    """The definition written out: accuracy table, then per factor the best minus the second best latent."""
    gaps = []
    for k in range(train_y.shape[1]):
        accuracies = sorted(
            (
                np.mean(
                    LinearSVC(C=0.01, class_weight="balanced")
                    .fit(train_codes[:, [i]], train_y[:, k])
                    .predict(test_codes[:, [i]])
                    == test_y[:, k]
                )
                for i in range(train_codes.shape[1])
            ),
            reverse=True,
        )
        gaps.append(accuracies[0] - accuracies[1])
    return float(np.mean(gaps))


@pytest.fixture(scope="module")
def perfect():
    train, test = factors(2000, 0), factors(1000, 1)
    noise = np.random.default_rng(2)

    def code(y):  # one latent per factor, well apart at scale 1, and an uninformative third latent
        return np.column_stack([2.0 * y[:, 0], 2.0 * y[:, 1], noise.normal(size=len(y))]) + noise.normal(
            0, 0.05, (len(y), 3)
        )

    return code(train), train, code(test), test


def test_a_perfect_code_scores_near_one_and_matches_the_definition(perfect):
    train_codes, train_y, test_codes, test_y = perfect
    matrix = sap_svm_score_matrix(train_codes, train_y, test_codes, test_y)
    assert matrix[0, 0] == pytest.approx(1.0) and matrix[1, 1] > 0.95
    scores = sap_from_matrix(matrix, NAMES)
    assert scores["sap"] > 0.4  # the second-best latent is at chance: 1/2 for shape, about 1/3 for size
    assert scores["sap"] == pytest.approx(reference(train_codes, train_y, test_codes, test_y), abs=1e-12)


def test_duplicated_latents_and_a_collapsed_code_score_zero(perfect):
    train_codes, train_y, test_codes, test_y = perfect
    doubled = sap_from_matrix(
        sap_svm_score_matrix(
            np.hstack([train_codes, train_codes]), train_y, np.hstack([test_codes, test_codes]), test_y
        ),
        NAMES,
    )
    assert doubled["sap"] == pytest.approx(0.0, abs=1e-12)
    constant = sap_from_matrix(
        sap_svm_score_matrix(np.zeros_like(train_codes), train_y, np.zeros_like(test_codes), test_y), NAMES
    )
    assert constant["sap"] == pytest.approx(0.0, abs=1e-12)


def test_the_registry_entry_fits_and_scores_on_disjoint_rows(perfect):
    train_codes, train_y, test_codes, test_y = perfect
    codes, classes = np.vstack([train_codes, test_codes]), np.vstack([train_y, test_y])
    config = SapConfig(images=2000, test_images=1000, protocol="disentanglement_lib")
    scores = METRICS["sap"](
        MetricInputs(representation=codes, factor_classes=classes, factor_names=NAMES), config, seed=3
    )
    rows = np.random.default_rng(3).permutation(len(codes))
    train, test = rows[:2000], rows[2000:]
    assert scores["x.sap"] == pytest.approx(reference(codes[train], classes[train], codes[test], classes[test]))
    with pytest.raises(ValueError, match="cannot hold 2000 train"):
        METRICS["sap"](
            MetricInputs(representation=codes[:2001], factor_classes=classes[:2001], factor_names=NAMES), config
        )
