"""Z-diff score: the beta-VAE disentanglement metric (Higgins et al. 2017), with the settings of the DIP-VAE paper.

DIP-VAE paper (Kumar et al. 2018) section 3, describing Higgins et al.: sample a generative factor y, then L pairs
of examples such that within each pair that factor takes the same value (the others random); with z = mu(x) the
encoder mean, average |z_1 - z_2| over the L pairs; that average difference vector is one training point with
label y. Repeat, train a low-capacity multiclass classifier on these points, and report its accuracy on points
drawn the same way (the test set). Section 4: "a one-vs-rest linear SVM with weight on the hinge loss C set to
0.01 and weight on the regularizer set to 1" — scikit-learn ``LinearSVC(C=0.01, loss="hinge")`` (one-vs-rest).

The pairs are drawn from stored codes with ``multistage.metrics.factor_sampling.FactorIndex`` (see there). The
fixed factor is drawn uniformly among the factors with at least two values (a single-value factor cannot be told
apart from any other and is left out: ``zdiff.factors`` says how many were used). Scores in [0, 1] (the paper
prints percentages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Gt
from sklearn.svm import LinearSVC

from multistage.metrics.checks import check_codes, check_factors, varying_factors
from multistage.metrics.factor_sampling import FactorIndex

__all__ = ["zdiff_points", "zdiff_score", "ZdiffConfig", "zdiff_metric"]


def zdiff_points(
    codes: np.ndarray, index: FactorIndex, factors: np.ndarray, count: int, pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points: (features (count, D) = mean |z_1 - z_2| over ``pairs`` pairs, labels (count,)), the fixed
    factor of each point drawn uniformly from ``factors``."""
    labels = rng.choice(factors, size=count)
    features = np.empty((count, codes.shape[1]))
    for p, factor in enumerate(labels):
        first = rng.integers(0, codes.shape[0], size=pairs)
        second = index.partners(int(factor), first, rng)
        features[p] = np.abs(codes[first] - codes[second]).mean(axis=0)
    return features, labels


def zdiff_score(
    codes: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    pairs: int = 64,
    train_points: int = 5000,
    test_points: int = 2500,
    svm_c: float = 0.01,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """{"zdiff": test accuracy, "zdiff.train": training accuracy, "zdiff.factors": factors used}; NaN scores
    when fewer than two factors vary."""
    factor_names = tuple(factor_names)
    codes = check_codes(codes, "codes")
    factor_classes = check_factors(factor_classes, factor_names, codes.shape[0])
    if pairs < 1 or train_points < 2 or test_points < 1:
        raise ValueError("pairs >= 1, train_points >= 2 and test_points >= 1 are needed")
    factors = np.flatnonzero(varying_factors(factor_classes))
    if factors.size < 2:
        return {"zdiff": float("nan"), "zdiff.train": float("nan"), "zdiff.factors": float(factors.size)}
    rng = np.random.default_rng(rng)
    index = FactorIndex(factor_classes)
    train_x, train_y = zdiff_points(codes, index, factors, train_points, pairs, rng)
    test_x, test_y = zdiff_points(codes, index, factors, test_points, pairs, rng)
    classifier = LinearSVC(C=svm_c, loss="hinge", dual=True, max_iter=20000, random_state=0)
    classifier.fit(train_x, train_y)
    return {
        "zdiff": float(np.mean(classifier.predict(test_x) == test_y)),
        "zdiff.train": float(np.mean(classifier.predict(train_x) == train_y)),
        "zdiff.factors": float(factors.size),
    }


@dataclass(frozen=True)
class ZdiffConfig:
    """``pairs``: L, pairs averaged per point (the beta-VAE metric's batch size); DIP-VAE sec. 4 settings."""

    pairs: Annotated[int, Ge(1)] = 64
    train_points: Annotated[int, Ge(2)] = 5000
    test_points: Annotated[int, Ge(1)] = 2500
    svm_c: Annotated[float, Gt(0)] = 0.01


def zdiff_metric(inputs, config: ZdiffConfig, seed: int) -> dict[str, float]:
    """Registry adapter: Z-diff of the representation over the factor set, keys ``x.zdiff...``."""
    scores = zdiff_score(
        inputs.representation,
        inputs.factor_classes,
        inputs.factor_names,
        config.pairs,
        config.train_points,
        config.test_points,
        config.svm_c,
        seed,
    )
    return {f"x.{key}": value for key, value in scores.items()}
