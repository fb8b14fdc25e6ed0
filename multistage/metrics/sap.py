"""Separated Attribute Predictability (SAP) score (Kumar, Sattigeri and Balakrishnan 2018, the DIP-VAE paper,
section 3).

A d x k matrix S scores how well latent i alone predicts factor j: the R^2 of a least-squares line for a
continuous factor; for a categorical one the balanced accuracy of thresholds on z_i (here those of a one-feature
balanced decision tree, fitted and scored on the same examples, as in the paper); 0 for an inactive latent, one
whose variance is at most ``inactive_fraction`` of the largest latent's (relative, so the score does not depend on
the code's scale, as disentanglement_lib's does not). SAP is the mean over factors of the gap between the two
largest entries of the column. ``categorical_factors`` names the
discrete factors; the others are treated as ordinal.

``protocol="disentanglement_lib"`` scores as that library's published protocol does on data sets whose factors are
all discrete (Locatello et al. 2019, its ``sap_score`` with ``continuous_factors=False``): S[i, k] is the test
accuracy of a linear SVM (C = 0.01, balanced class weights) fitted on latent i alone to predict factor k, on
disjoint train and test rows, with no latent left out; the top-two gap and its mean are as above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge
from sklearn.metrics import balanced_accuracy_score
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from multistage.metrics.checks import check_codes, check_factors, seeded_subset, varying_factors

__all__ = ["sap_score_matrix", "sap_svm_score_matrix", "sap_from_matrix", "sap_score", "SapConfig", "sap_metric"]


def _threshold_balanced_accuracy(latent: np.ndarray, classes: np.ndarray) -> float:
    tree = DecisionTreeClassifier(
        max_leaf_nodes=max(2, np.unique(classes).size), class_weight="balanced", random_state=0
    )
    tree.fit(latent[:, None], classes)
    return float(balanced_accuracy_score(classes, tree.predict(latent[:, None])))


def sap_score_matrix(
    codes: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    categorical_factors: Sequence[str] = (),
    inactive_fraction: float = 0.01,
) -> np.ndarray:
    """The (D, K) score matrix S of DIP-VAE section 3 (see the module docstring); NaN columns for factors with a
    single value."""
    codes = check_codes(codes, "codes")
    factor_classes = check_factors(factor_classes, tuple(factor_names), codes.shape[0])
    variance = codes.var(axis=0)
    # relative to the largest variance, so that a code and the same code scaled score alike; a latent of no
    # variance at all (below 1e-12) is inactive whatever the others do
    active = (variance > inactive_fraction * variance.max()) & (variance > 1e-12)
    varying = varying_factors(factor_classes)
    matrix = np.zeros((codes.shape[1], factor_classes.shape[1]))
    for k, name in enumerate(factor_names):
        if not varying[k]:
            matrix[:, k] = np.nan
            continue
        target = factor_classes[:, k]
        for i in np.flatnonzero(active):
            if name in categorical_factors:
                matrix[i, k] = _threshold_balanced_accuracy(codes[:, i], target)
            else:
                matrix[i, k] = np.corrcoef(codes[:, i], target)[0, 1] ** 2
    return matrix


def sap_svm_score_matrix(
    train_codes: np.ndarray, train_classes: np.ndarray, test_codes: np.ndarray, test_classes: np.ndarray
) -> np.ndarray:
    """The (D, K) matrix of disentanglement_lib's SAP protocol (module docstring): test accuracy of a linear SVM
    (C = 0.01, balanced) on one latent per factor; NaN columns for factors with a single value in the train rows."""
    train_codes, test_codes = check_codes(train_codes, "train codes"), check_codes(test_codes, "test codes")
    train_classes, test_classes = np.asarray(train_classes), np.asarray(test_classes)
    matrix = np.zeros((train_codes.shape[1], train_classes.shape[1]))
    for k in range(train_classes.shape[1]):
        if np.unique(train_classes[:, k]).size < 2:
            matrix[:, k] = np.nan
            continue
        for i in range(train_codes.shape[1]):
            classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            classifier.fit(train_codes[:, i : i + 1], train_classes[:, k])
            matrix[i, k] = float(np.mean(classifier.predict(test_codes[:, i : i + 1]) == test_classes[:, k]))
    return matrix


def sap_from_matrix(matrix: np.ndarray, factor_names: Sequence[str]) -> dict[str, float]:
    """{"sap": the mean over factors of the gap between the two largest entries of each column of ``matrix``,
    "sap.<factor>": each gap}; NaN columns (a factor with one value) are left out of the mean."""
    ordered = np.sort(matrix, axis=0)[::-1]
    gaps = ordered[0] - (ordered[1] if ordered.shape[0] > 1 else 0.0)
    finite = gaps[np.isfinite(gaps)]
    result = {"sap": float(finite.mean()) if finite.size else float("nan")}
    return result | {f"sap.{name}": float(gap) for name, gap in zip(factor_names, gaps)}


def sap_score(
    codes: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    categorical_factors: Sequence[str] = (),
    inactive_fraction: float = 0.01,
) -> dict[str, float]:
    """SAP (DIP-VAE sec. 3): {"sap": mean top-two gap, "sap.<factor>": the gap per factor (NaN for a factor with
    a single value, left out of the mean)}. Codes (N, D) are encoder means; factor_classes int (N, K)."""
    factor_names = tuple(factor_names)
    unknown = [name for name in categorical_factors if name not in factor_names]
    if unknown:
        raise ValueError(f"categorical_factors {unknown} are not factors; factors are {list(factor_names)}")
    matrix = sap_score_matrix(codes, factor_classes, factor_names, categorical_factors, inactive_fraction)
    return sap_from_matrix(matrix, factor_names)


@dataclass(frozen=True)
class SapConfig:
    """``images``: rows of the factor set scored (a seeded subset); latents whose variance is at most
    ``inactive_fraction`` of the largest latent's are left out. ``protocol``: ``paper`` (DIP-VAE sec. 3, on
    ``images`` rows) or ``disentanglement_lib`` (linear SVMs fitted on ``images`` rows and scored on
    ``test_images`` other rows; ``inactive_fraction`` and ``categorical_factors`` unused)."""

    images: Annotated[int, Ge(10)] = 10000
    inactive_fraction: Annotated[float, Ge(0)] = 0.01
    protocol: Literal["paper", "disentanglement_lib"] = "paper"
    test_images: Annotated[int, Ge(2)] = 5000


def sap_metric(inputs, config: SapConfig, seed: int) -> dict[str, float]:
    """Registry adapter: SAP of the representation, balanced threshold accuracy for the categorical factors (or
    disentanglement_lib's SVM protocol)."""
    if config.protocol == "disentanglement_lib":
        rows = seeded_subset(len(inputs.representation), config.images + config.test_images, seed)
        if rows.size < config.images + 2:
            raise ValueError(
                f"sap: {len(inputs.representation)} rows cannot hold {config.images} train and at least 2 test rows"
            )
        train, test = rows[: config.images], rows[config.images :]
        matrix = sap_svm_score_matrix(
            inputs.representation[train],
            inputs.factor_classes[train],
            inputs.representation[test],
            inputs.factor_classes[test],
        )
        return {f"x.{key}": value for key, value in sap_from_matrix(matrix, inputs.factor_names).items()}
    chosen = seeded_subset(len(inputs.representation), config.images, seed)
    categorical = tuple(name for name in inputs.categorical_factors if name in inputs.factor_names)
    scores = sap_score(
        inputs.representation[chosen],
        inputs.factor_classes[chosen],
        inputs.factor_names,
        categorical,
        config.inactive_fraction,
    )
    return {f"x.{key}": value for key, value in scores.items()}
