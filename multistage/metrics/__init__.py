"""Metrics: pure functions of arrays, each returning a flat dict whose keys name the estimator.

With ground truth: ``mig`` (histogram), ``mig_sampling`` (beta-TCVAE appendix A), ``sap``, ``zdiff``,
``factorvae_score``, ``dci``, ``downstream`` (MS-VAE figure 6). Without: ``tc_decomposition`` (beta-TCVAE eq. 3),
``indicators`` (noise-modelling sec. 6.2, KL per unit, discrete accuracy), ``aggregate_posterior`` (the density
estimators behind both). Generation and conditioning: ``conditioning`` (MS-VAE M1..M4), ``frechet`` and ``kid``
(in an in-domain factor classifier's features; the detail network's, trained on factors and nuisance, for the
detail-aware distance), ``inception_fid`` (optional), ``reconstruction`` (L1, L2, BCE, and over the foreground).
Detail: ``detail`` (probes fitted on real images read each nuisance column off X, Y and X-hat).

The metrics the evaluate stage runs, with their config dataclasses, are registered in
``multistage.evaluation.registry``.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and the API pages; at run time each name is imported when first used (below)
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

# name -> the submodule defining it. Imported on first use, so that importing one submodule (a training stage needs
# ``multistage.metrics.clustering``) does not import scikit-learn through the others: about a third of a stage's
# start-up time (measured with ``python -X importtime -c "import stages.train_stage_one"``)
_SUBMODULE = {
    "conditioning_terms": "conditioning",
    "normalized_code_mutual_information": "conditioning",
    "FactorClassifier": "frechet",
    "extract_features": "frechet",
    "factor_accuracies": "frechet",
    "frechet_distance": "frechet",
    "frechet_distance_from_statistics": "frechet",
    "gaussian_statistics": "frechet",
    "train_factor_classifier": "frechet",
    "discretize": "mig",
    "factor_entropies": "mig",
    "mig_key": "mig",
    "mutual_information_gap": "mig",
    "mutual_information_matrix": "mig",
    "ReconstructionErrorAccumulator": "reconstruction",
    "reconstruction_errors": "reconstruction",
    "reconstruction_errors_from_batches": "reconstruction",
}


def __getattr__(name: str):
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULE})


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
