"""The discrete code's class accuracy and information (JointVAE sec. 4.1): known answers, independent computations
(scikit-learn's mutual information, a hand-counted table) and the collapsed code that must score nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from multistage.metrics.clustering import (
    collapse_message,
    discrete_information,
    kmeans_accuracy,
    majority_accuracy,
    matched_accuracy,
)


def test_majority_and_matched_accuracy_on_a_hand_counted_table():
    # values 0 and 1 both hold mostly class "a": majority maps both to "a", a one-to-one matching cannot
    categories = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    classes = np.array(["a", "a", "b", "a", "a", "b", "b", "b"])
    assert majority_accuracy(categories, classes) == pytest.approx((2 + 2 + 2) / 8)
    assert matched_accuracy(categories, classes) == pytest.approx((2 + 2) / 8)
    labels = np.random.default_rng(0).integers(0, 5, 300)
    relabelled = np.array([3, 1, 4, 0, 2])[labels]
    assert majority_accuracy(relabelled, labels) == matched_accuracy(relabelled, labels) == 1.0
    assert majority_accuracy(np.zeros(300, int), labels) == pytest.approx(np.bincount(labels).max() / 300)
    with pytest.raises(ValueError, match="one length"):
        majority_accuracy(np.zeros(3), np.zeros(4))


def test_kmeans_finds_separated_blobs_and_not_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    centres = rng.normal(0, 10, (4, 6))
    blobs = centres[labels] + rng.normal(0, 0.5, (400, 6))
    assert kmeans_accuracy(blobs, labels, seed=0) == {"majority": 1.0, "matched": 1.0}
    noise = kmeans_accuracy(rng.normal(size=(400, 6)), labels, seed=0)
    assert noise["matched"] < 0.4 and noise["majority"] < 0.4


def test_discrete_information_splits_the_kl_and_sees_a_collapsed_code():
    k, n = 10, 500
    labels = np.arange(n) % k
    collapsed = np.zeros((n, k))
    collapsed[:, 3] = 1.0  # confident, and the same for every item: the capacity met with no information
    info = discrete_information(collapsed)
    assert "collapsed" in collapse_message(info) and "1 value(s) used" in collapse_message(info)
    assert info["kl"] == pytest.approx(math.log(k)) and info["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert info["marginal_kl"] == pytest.approx(math.log(k)) and info["values_used"] == 1
    perfect = np.eye(k)[labels]
    info = discrete_information(perfect)
    assert collapse_message(info) is None
    assert info["mutual_information"] == pytest.approx(math.log(k)) and info["marginal_kl"] == pytest.approx(0.0)
    uniform = np.full((n, k), 1.0 / k)
    assert discrete_information(uniform)["kl"] == pytest.approx(0.0, abs=1e-12)
    assert collapse_message(discrete_information(uniform)) is None  # no capacity used: nothing to warn about
    # a hard noisy code: the information equals scikit-learn's I(category; item) of the one-hot rows
    rng = np.random.default_rng(2)
    noisy_labels = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), labels)
    hard = np.eye(k)[noisy_labels]
    assert discrete_information(hard)["mutual_information"] == pytest.approx(
        mutual_info_score(noisy_labels, np.arange(n)), rel=1e-9
    )
    soft = rng.dirichlet(np.full(k, 0.3), n)
    info = discrete_information(soft)
    assert info["kl"] == pytest.approx(info["mutual_information"] + info["marginal_kl"])
    with pytest.raises(ValueError, match="sum to 1"):
        discrete_information(soft * 2)
