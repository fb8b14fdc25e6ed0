"""Mutual information gap (MIG), histogram estimator (beta-TCVAE paper, section 4.1, eq. 7).

    MIG = 1/K * sum_k 1/H(v_k) * ( I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k) ),  j(k) = argmax_j I(z_j; v_k)

As disentanglement_lib computes it (used by MS-VAE appendix G): each latent mean is discretised into ``bins``
equal-width bins over its own range, I is scikit-learn's plug-in ``mutual_info_score`` (nats) and H(v_k) the
plug-in entropy of the factor. The estimator is named in the keys: ``mig.histogram20`` for ``bins=20``.

Reading the numbers: a factor with more classes than ``bins`` cannot reach 1 (a perfect code for a uniform
32-class factor scores at most log(20)/log(32) ~ 0.86), and the plug-in MI of independent variables is biased
upwards by about (bins - 1)(classes - 1) / (2N) nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import mutual_info_score

__all__ = [
    "discretize",
    "mutual_information_matrix",
    "factor_entropies",
    "mig_key",
    "mutual_information_gap",
]


def _as_2d_finite(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (N, D), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Discretise each column of ``codes`` (N, L) into ``bins`` equal-width bins over its own range.

    disentanglement_lib's ``_histogram_discretize``: ``np.digitize(column, np.histogram(column, bins)[1][:-1])``,
    giving integer labels in 1..bins. A constant column (zero range) gets a single label (numpy widens the range
    to [value - 0.5, value + 0.5]), so its mutual information with anything is 0.
    Returns int64 (N, L).
    """
    codes = _as_2d_finite(codes, "codes")
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    codes = codes.astype(np.float64, copy=False)
    discrete = np.empty(codes.shape, dtype=np.int64)
    for column in range(codes.shape[1]):
        edges = np.histogram(codes[:, column], bins=int(bins))[1]
        discrete[:, column] = np.digitize(codes[:, column], edges[:-1])
    return discrete


def mutual_information_matrix(discrete_codes: np.ndarray, factor_classes: np.ndarray) -> np.ndarray:
    """Plug-in mutual information (nats) between every discrete latent and every factor: (L, K).

    Entry [j, k] = I(z_j; v_k) = ``sklearn.metrics.mutual_info_score(v_k, z_j)`` computed from the empirical joint
    distribution of the N rows (beta-TCVAE sec. 4.1; disentanglement_lib ``discrete_mutual_info``).
    """
    discrete_codes = _as_2d_finite(discrete_codes, "discrete_codes")
    factor_classes = _as_2d_finite(factor_classes, "factor_classes")
    if discrete_codes.shape[0] != factor_classes.shape[0]:
        raise ValueError(
            f"discrete_codes has {discrete_codes.shape[0]} rows but factor_classes has {factor_classes.shape[0]}"
        )
    num_latents, num_factors = discrete_codes.shape[1], factor_classes.shape[1]
    matrix = np.zeros((num_latents, num_factors), dtype=np.float64)
    for j in range(num_latents):
        for k in range(num_factors):
            matrix[j, k] = mutual_info_score(factor_classes[:, k], discrete_codes[:, j])
    return matrix


def factor_entropies(factor_classes: np.ndarray) -> np.ndarray:
    """Plug-in entropy H(v_k) (nats) of each factor's empirical distribution, ``mutual_info_score(v, v)``: (K,)."""
    factor_classes = _as_2d_finite(factor_classes, "factor_classes")
    return np.array(
        [mutual_info_score(factor_classes[:, k], factor_classes[:, k]) for k in range(factor_classes.shape[1])],
        dtype=np.float64,
    )


def mig_key(bins: int = 20, exclude_factors: Sequence[str] = ()) -> str:
    """The result key for a MIG estimate: ``mig.histogram<bins>`` over all factors, or
    ``mig.histogram<bins>.no_<f1>_<f2>...`` for the mean over the factors other than ``exclude_factors``
    (in the order given)."""
    key = f"mig.histogram{int(bins)}"
    if exclude_factors:
        key += ".no_" + "_".join(exclude_factors)
    return key


def mutual_information_gap(
    codes: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    bins: int = 20,
    exclude_factors: Sequence[str] = (),
) -> dict[str, float]:
    """Mutual information gap with the disentanglement_lib histogram estimator (beta-TCVAE sec. 4.1, eq. 7).

    Args:
        codes: float (N, L) latent codes, usually the encoder means of N images.
        factor_classes: int (N, K) class index of each ground-truth factor for the same images.
        factor_names: the K factor names, used in the keys.
        bins: number of equal-width bins per latent (named in the keys).
        exclude_factors: names of factors to leave out of an additional mean (e.g. ``("shape",)`` for dSprites,
            whose shape factor is famously hard); the all-factor mean is always reported as well.

    Returns a flat dict (shown for bins=20, exclude_factors=("shape",)):
        "mig.histogram20":            mean normalised gap over all factors with non-zero entropy,
        "mig.histogram20.<factor>":   normalised gap (top1 - top2 MI over latents) / H(factor), per factor,
        "mig.histogram20.no_shape":   mean over the factors not excluded (only when exclude_factors is given).
    A factor that takes a single value in the sample has H = 0 and an undefined gap: its per-factor value is NaN
    and it is left out of the means. With a single latent the second-best MI is taken as 0.
    """
    factor_names = tuple(factor_names)
    factor_classes = _as_2d_finite(factor_classes, "factor_classes")
    if len(factor_names) != factor_classes.shape[1]:
        raise ValueError(f"{len(factor_names)} factor names for {factor_classes.shape[1]} factor columns")
    unknown = [name for name in exclude_factors if name not in factor_names]
    if unknown:
        raise ValueError(f"exclude_factors {unknown} are not factors; factors are {list(factor_names)}")

    discrete = discretize(codes, bins)
    matrix = mutual_information_matrix(discrete, factor_classes)  # (L, K)
    entropies = factor_entropies(factor_classes)

    sorted_mi = np.sort(matrix, axis=0)[::-1]
    top1 = sorted_mi[0]
    top2 = sorted_mi[1] if sorted_mi.shape[0] > 1 else np.zeros_like(top1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(entropies > 0, (top1 - top2) / np.where(entropies > 0, entropies, 1.0), np.nan)

    def mean_over(mask: np.ndarray) -> float:
        values = gaps[mask & np.isfinite(gaps)]
        return float(values.mean()) if values.size else float("nan")

    base = mig_key(bins)
    result: dict[str, float] = {base: mean_over(np.ones(len(factor_names), dtype=bool))}
    for name, gap in zip(factor_names, gaps):
        result[f"{base}.{name}"] = float(gap)
    if exclude_factors:
        keep = np.array([name not in exclude_factors for name in factor_names])
        result[mig_key(bins, exclude_factors)] = mean_over(keep)
    return result
