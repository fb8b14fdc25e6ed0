"""Conditioning of the stage-two outputs on the stage-one code C: the MS-VAE terms M1..M4 (section 4).

With E the stage-one encoder mean and G the stage-two decoder: C_R = E(X), M1 = MI[C_R; E(Y)],
M2 = MI[C_R; E(G(Y, Z))], M3 = MI[C_R; E(G(Y, eps))], M4 = MI[C_R; E(G(eps, Z))]; the conditioning on C is kept
when M2 > M1 > M3 >> M4.

Each MI is MS-VAE appendix G, eq. 6: MI[C^R, C] = (1/n) sum_i I(c_i; c^R_i) / H(c^R_i), the mean over code
dimensions of the normalised MI between matching dimensions. The estimator is MIG's histogram one
(``multistage.metrics.mig``): ``bins`` equal-width bins per dimension, plug-in ``mutual_info_score``, and
H(c^R_i) = I(c^R_i; c^R_i), so a code against itself gives exactly 1. A constant reference dimension (H = 0) is
left out of the mean.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mutual_info_score

from multistage.metrics.mig import discretize

__all__ = ["normalized_code_mutual_information", "conditioning_terms"]


def normalized_code_mutual_information(c_reference: np.ndarray, c_other: np.ndarray, bins: int = 20) -> float:
    """MS-VAE appendix G eq. 6: (1/n) sum_i I(c_i; c^R_i) / H(c^R_i) with the histogram estimator.

    Args:
        c_reference: (N, n) reference codes C^R (e.g. encoder means of the real images).
        c_other: (N, n) codes of the matching N other images (row i of both describes the same source image).
        bins: equal-width bins per dimension, each over that dimension's own range.
    Returns a float in [0, 1]; NaN if every reference dimension is constant.
    """
    c_reference = np.asarray(c_reference)
    c_other = np.asarray(c_other)
    if c_reference.shape != c_other.shape or c_reference.ndim != 2:
        raise ValueError(
            f"c_reference and c_other must be 2-d arrays of the same shape, got {c_reference.shape} and {c_other.shape}"
        )
    reference_discrete = discretize(c_reference, bins)
    other_discrete = discretize(c_other, bins)
    ratios = []
    for i in range(c_reference.shape[1]):
        entropy = mutual_info_score(reference_discrete[:, i], reference_discrete[:, i])
        if entropy <= 0:
            continue
        ratios.append(mutual_info_score(reference_discrete[:, i], other_discrete[:, i]) / entropy)
    return float(np.mean(ratios)) if ratios else float("nan")


def conditioning_terms(
    c_r: np.ndarray,
    c_y: np.ndarray,
    c_xhat: np.ndarray,
    c_y_eps: np.ndarray,
    c_eps_z: np.ndarray,
    bins: int = 20,
) -> dict[str, float]:
    """The MS-VAE section 4 conditioning terms, each by appendix G eq. 6 (histogram estimator, ``bins`` bins).

    Args (all (N, n), row i derived from the same real image X_i):
        c_r:     E(X), codes of the real images (the reference C^R).
        c_y:     E(Y), codes of the stage-one reconstructions Y.
        c_xhat:  E(G(Y, Z)), codes of the stage-two reconstructions.
        c_y_eps: E(G(Y, eps)), stage-two outputs from Y with Z replaced by prior noise eps ~ N(0, I).
        c_eps_z: E(G(eps, Z)), stage-two outputs with Y replaced by noise and the inferred Z kept.
    Returns {"conditioning.M1": MI[C_R; C_Y], "conditioning.M2": MI[C_R; C_X-hat],
             "conditioning.M3": MI[C_R; C_Y,eps], "conditioning.M4": MI[C_R; C_eps,Z]}.
    """
    return {
        "conditioning.M1": normalized_code_mutual_information(c_r, c_y, bins),
        "conditioning.M2": normalized_code_mutual_information(c_r, c_xhat, bins),
        "conditioning.M3": normalized_code_mutual_information(c_r, c_y_eps, bins),
        "conditioning.M4": normalized_code_mutual_information(c_r, c_eps_z, bins),
    }
