"""Conditioning of the stage-two outputs on the stage-one code C: the MS-VAE terms M1..M4.

MS-VAE (multi-stage modelling) section 4, "Measuring the Conditioning on C": with E the mean of the stage-one
encoder (C -> Y subgraph) and G the stage-two decoder,

    C_R = E(X),  C_Y = E(Y),  C_X-hat = E(G(Y, Z)),  C_Y,eps = E(G(Y, eps)),  C_eps,Z = E(G(eps, Z)),
    M1 = MI[C_R; C_Y],  M2 = MI[C_R; C_X-hat],  M3 = MI[C_R; C_Y,eps],  M4 = MI[C_R; C_eps,Z],

and the conditioning on C is considered kept when M2 > M1 > M3 >> M4.

Each MI between two code matrices is MS-VAE appendix G, eq. 6:

    MI[C^R, C] = (1/n) * sum_i I(c_i; c^R_i) / H(c^R_i),

the mean over the n code dimensions of the mutual information between matching dimensions, normalised by the
entropy of the reference dimension. The paper does not state its estimator; we use the same histogram estimator as
MIG (disentanglement_lib, see ``multistage.metrics.mig``): each dimension of each code matrix is discretised into
``bins`` equal-width bins over its own range, I is scikit-learn's plug-in ``mutual_info_score`` and
H(c^R_i) = I(c^R_i; c^R_i). This normalisation gives exactly 1 for a code compared with itself (or with any
strictly monotone transform that keeps the bin assignment) and about 0 for independent noise (the plug-in bias is
about (bins - 1)^2 / (2N) nats before normalisation).

A reference dimension that is constant in the sample has H = 0 and carries no information; it is left out of the
mean (n counts the non-constant reference dimensions). Collapsed (inactive) but not exactly constant latents are
kept, as in eq. 6, and pull every term towards 0 by the same amount.
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
            f"c_reference and c_other must be 2-d arrays of the same shape, got {c_reference.shape} "
            f"and {c_other.shape}"
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
