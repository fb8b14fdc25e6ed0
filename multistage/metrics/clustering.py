"""How well an unsupervised categorical code finds the classes: JointVAE section 4.1 ("we can infer the digit type
on test data with 88.7% accuracy by simply looking at the value of the discrete latent variable").

* ``majority_accuracy``: each value of the code predicts the class most of its items carry (the usual protocol
  for unsupervised clustering accuracy; several values may map to one class). It is what a clustering "finds".
* ``matched_accuracy``: the stricter one-to-one matching of values to classes that maximises agreement
  (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``); two values sharing a class count once.
* ``kmeans_accuracy``: the baseline any learned code must beat, scikit-learn's k-means with k = the number of
  classes on the given features (raw pixels, or a continuous code), scored by both protocols.
* ``discrete_information``: splits the per-item KL that JointVAE's capacity term controls,
  E_x KL(q(c|x) || U(K)), into I(x; c) + KL(q(c) || U(K)), with q(c) = E_x q(c|x) (the aggregate posterior).
  The first term is the information the code carries about x; the second is a code that is confident but says the
  same thing for every x. A collapsed code (every item one-hot on the same value) has KL = log K and I = 0: the
  capacity is met while the code carries nothing, which is JointVAE's failure mode when C_c rises before the
  decoder uses c (docs/studies/jointvae.md).
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

__all__ = [
    "contingency_table",
    "majority_accuracy",
    "matched_accuracy",
    "kmeans_accuracy",
    "discrete_information",
    "collapse_message",
]


def contingency_table(categories: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Counts (values of the code present, classes present) of items per (category, class)."""
    categories, classes = np.asarray(categories).ravel(), np.asarray(classes).ravel()
    if categories.shape != classes.shape or categories.size == 0:
        raise ValueError(
            f"categories and classes must be non-empty and of one length, got {categories.shape}, {classes.shape}"
        )
    _, category_index = np.unique(categories, return_inverse=True)
    _, class_index = np.unique(classes, return_inverse=True)
    table = np.zeros((category_index.max() + 1, class_index.max() + 1))
    np.add.at(table, (category_index, class_index), 1.0)
    return table


def majority_accuracy(categories: np.ndarray, classes: np.ndarray) -> float:
    """Fraction of items whose class is the majority class of their category (many-to-one mapping)."""
    table = contingency_table(categories, classes)
    return float(table.max(axis=1).sum() / table.sum())


def matched_accuracy(categories: np.ndarray, classes: np.ndarray) -> float:
    """Accuracy of predicting ``classes`` (N,) from ``categories`` (N,) under the best one-to-one matching of
    categories to classes (Hungarian algorithm); unmatched categories count as wrong."""
    table = contingency_table(categories, classes)
    from scipy.optimize import linear_sum_assignment  # here: slow to import, and the training stages import this module

    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / table.sum())


def kmeans_accuracy(features: np.ndarray, classes: np.ndarray, seed: int = 0, n_init: int = 10) -> dict[str, float]:
    """k-means (k = number of distinct classes) on ``features`` (N, D), scored as ``majority`` and ``matched``."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    k = len(np.unique(classes))
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(features)
    return {"majority": majority_accuracy(clusters, classes), "matched": matched_accuracy(clusters, classes)}


def discrete_information(alpha: np.ndarray) -> dict[str, float]:
    """For q(c|x_n) = ``alpha`` (N, K), rows summing to 1, in nats: ``kl`` = mean_n KL(alpha_n || U(K)),
    ``mutual_information`` = H(mean_n alpha_n) - mean_n H(alpha_n), ``marginal_kl`` = KL(mean_n alpha_n || U(K)),
    with kl = mutual_information + marginal_kl, and ``values_used``: how many values are the argmax of some item."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 2 or alpha.shape[0] == 0 or alpha.shape[1] < 2:
        raise ValueError(f"alpha must be (N, K) probabilities with N >= 1 and K >= 2, got shape {alpha.shape}")
    if not np.all(np.isfinite(alpha)) or alpha.min() < 0 or not np.allclose(alpha.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("alpha must hold finite, non-negative rows that sum to 1")
    log_k = np.log(alpha.shape[1])
    mean_entropy = float(-xlogy(alpha, alpha).sum(axis=1).mean())
    marginal = alpha.mean(axis=0)
    marginal_entropy = float(-xlogy(marginal, marginal).sum())
    return {
        "kl": log_k - mean_entropy,
        "mutual_information": marginal_entropy - mean_entropy,
        "marginal_kl": log_k - marginal_entropy,
        "values_used": float(len(np.unique(alpha.argmax(axis=1)))),
    }


def collapse_message(information: dict[str, float], name: str = "the discrete code") -> str | None:
    """A warning when ``information`` (from :func:`discrete_information`) describes a collapsed code: its KL is
    at least 0.5 nats but less than a tenth of it is information about x; else None."""
    kl, carried = information["kl"], information["mutual_information"]
    if kl < 0.5 or carried >= 0.1 * kl:
        return None
    return (
        f"{name} has collapsed: KL to the uniform prior {kl:.2f} nats, but it carries only {carried:.3f} nats about "
        f"x ({int(information['values_used'])} value(s) used); its capacity rose before the decoder used it. "
        "Let the capacity rise more slowly (capacity_c_steps) or train longer"
    )
