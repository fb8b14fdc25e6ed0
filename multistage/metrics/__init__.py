"""Metrics: pure functions of arrays, each returning a flat dict whose keys name the estimator.

- ``mig``: mutual information gap, disentanglement_lib histogram estimator (beta-TCVAE sec. 4.1).
- ``conditioning``: MS-VAE M1..M4 (sec. 4, appendix G eq. 6).
- ``frechet``: Fréchet distance in the features of an in-domain factor classifier (Heusel et al. 2017).
- ``reconstruction``: per-pixel L1, L2 and binary cross-entropy, streamable.
"""

from multistage.metrics.conditioning import conditioning_terms, normalized_code_mutual_information
from multistage.metrics.frechet import (
    FactorClassifier,
    extract_features,
    factor_accuracies,
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    train_factor_classifier,
)
from multistage.metrics.mig import (
    discretize,
    factor_entropies,
    mig_key,
    mutual_information_gap,
    mutual_information_matrix,
)
from multistage.metrics.reconstruction import (
    ReconstructionErrorAccumulator,
    reconstruction_errors,
    reconstruction_errors_from_batches,
)

__all__ = [
    "conditioning_terms",
    "normalized_code_mutual_information",
    "FactorClassifier",
    "extract_features",
    "factor_accuracies",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "train_factor_classifier",
    "discretize",
    "factor_entropies",
    "mig_key",
    "mutual_information_gap",
    "mutual_information_matrix",
    "ReconstructionErrorAccumulator",
    "reconstruction_errors",
    "reconstruction_errors_from_batches",
]
