"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs", section 4),
here in the features of the in-domain factor classifier (``multistage.metrics.frechet``), not Inception's.

KID is the squared maximum mean discrepancy with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (d the
feature dimension), estimated without bias:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(a_i, a_j) + 1/(m(m-1)) sum_{i != j} k(b_i, b_j) - 2/m^2 sum_{i,j} k(a_i, b_j),

averaged over ``subsets`` random subsets of m = ``subset_size`` rows of each set (drawn without replacement
within a subset), as in the paper's reference code; the standard deviation over subsets is reported too. Unlike
the Fréchet distance it has an unbiased estimator, so small samples compare fairly (it can be slightly negative
when the two sets come from one distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge
from sklearn.metrics.pairwise import polynomial_kernel

__all__ = ["unbiased_mmd2", "kernel_distance", "KidConfig", "kid_metric"]


def unbiased_mmd2(features_a: np.ndarray, features_b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """MMD^2_u between two equally large feature sets (m, d) with k(x, y) = (x.y / d + coef0)^degree."""
    m = features_a.shape[0]
    if features_b.shape[0] != m or m < 2:
        raise ValueError(
            f"two feature sets of one size m >= 2 are needed, got {features_a.shape[0]} and {features_b.shape[0]}"
        )
    gamma = 1.0 / features_a.shape[1]
    k_aa = polynomial_kernel(features_a, degree=degree, gamma=gamma, coef0=coef0)
    k_bb = polynomial_kernel(features_b, degree=degree, gamma=gamma, coef0=coef0)
    k_ab = polynomial_kernel(features_a, features_b, degree=degree, gamma=gamma, coef0=coef0)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2.0 * k_ab.mean())


def kernel_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subsets: int = 50,
    subset_size: int = 1000,
    rng: np.random.Generator | int | None = 0,
) -> tuple[float, float]:
    """(mean, standard deviation) of MMD^2_u over ``subsets`` subsets of min(subset_size, N_a, N_b) rows each."""
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sets (N, d) of one width expected, got {features_a.shape}, {features_b.shape}")
    for name, array in (("features_a", features_a), ("features_b", features_b)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values")
    rng = np.random.default_rng(rng)
    m = min(subset_size, features_a.shape[0], features_b.shape[0])
    values = [
        unbiased_mmd2(
            features_a[rng.choice(features_a.shape[0], m, replace=False)],
            features_b[rng.choice(features_b.shape[0], m, replace=False)],
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if subsets > 1 else 0.0


@dataclass(frozen=True)
class KidConfig:
    subsets: Annotated[int, Ge(1)] = 25
    subset_size: Annotated[int, Ge(2)] = 1000


def kid_metric(inputs, config: KidConfig, seed: int) -> dict[str, float]:
    """Registry adapter: KID between ``features`` and ``other_features``, keys ``kid.factor_classifier.<label>``
    (the mean) and ``....std``."""
    mean, std = kernel_distance(inputs.features, inputs.other_features, config.subsets, config.subset_size, rng=seed)
    key = f"kid.factor_classifier.{inputs.label}"
    return {key: mean, f"{key}.std": std}
