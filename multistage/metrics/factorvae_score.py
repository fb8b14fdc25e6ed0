"""The FactorVAE disentanglement score (Kim & Mnih 2018, "Disentangling by Factorising", section 4), as computed by
disentanglement_lib (Locatello et al. 2019, ``evaluation/metrics/factor_vae.py``).

1. Each latent's standard deviation over the data (from ``variance_images`` codes); latents whose variance is
   not above ``inactive_variance`` (collapsed) are pruned.
2. A vote: choose a factor k (uniformly among the factors with at least two values), a batch of L observations
   with factor k fixed to one value and the others random; divide the codes by the global standard deviations;
   the vote is (argmin over active latents of the within-batch variance, k).
3. A majority-vote classifier maps each latent to the factor it voted for most often (training votes); the score is
   its accuracy on fresh (evaluation) votes.

Batches are drawn from stored codes with ``multistage.metrics.factor_sampling.FactorIndex``. With no active
latent the score is 0 (as in disentanglement_lib).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge

from multistage.metrics.checks import check_codes, check_factors, varying_factors
from multistage.metrics.factor_sampling import FactorIndex

__all__ = ["factorvae_votes", "factorvae_score", "FactorVaeScoreConfig", "factorvae_score_metric"]


def factorvae_votes(
    normalised: np.ndarray,
    active: np.ndarray,
    index: FactorIndex,
    factors: np.ndarray,
    count: int,
    batch_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vote matrix (D, K): entry (j, k) counts the batches with factor k fixed whose argmin-variance latent was j."""
    votes = np.zeros((normalised.shape[1], int(factors.max()) + 1), dtype=np.int64)
    active_index = np.flatnonzero(active)
    for factor in rng.choice(factors, size=count):
        batch = index.fixed_batch(int(factor), batch_size, rng)
        variances = normalised[batch][:, active_index].var(axis=0, ddof=1)
        votes[active_index[np.argmin(variances)], factor] += 1
    return votes


def factorvae_score(
    codes: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    batch_size: int = 64,
    train_votes: int = 5000,
    eval_votes: int = 2500,
    variance_images: int = 10000,
    inactive_variance: float = 0.0,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """{"factorvae_score": evaluation accuracy of the majority-vote classifier, "factorvae_score.train": its
    training accuracy, "factorvae_score.active_latents": latents kept}. NaN when no factor varies."""
    factor_names = tuple(factor_names)
    codes = check_codes(codes, "codes")
    factor_classes = check_factors(factor_classes, factor_names, codes.shape[0])
    if batch_size < 2 or train_votes < 1 or eval_votes < 1:
        raise ValueError("batch_size >= 2, train_votes >= 1 and eval_votes >= 1 are needed")
    rng = np.random.default_rng(rng)
    factors = np.flatnonzero(varying_factors(factor_classes))
    sample = rng.choice(codes.shape[0], size=min(variance_images, codes.shape[0]), replace=False)
    variance = codes[sample].var(axis=0, ddof=1) if sample.size > 1 else np.zeros(codes.shape[1])
    active = variance > inactive_variance
    result = {"factorvae_score.active_latents": float(active.sum())}
    if factors.size == 0:
        return result | {"factorvae_score": float("nan"), "factorvae_score.train": float("nan")}
    if not active.any():
        return result | {"factorvae_score": 0.0, "factorvae_score.train": 0.0}
    normalised = codes / np.sqrt(np.where(active, variance, 1.0))
    index = FactorIndex(factor_classes)
    train = factorvae_votes(normalised, active, index, factors, train_votes, batch_size, rng)
    evaluation = factorvae_votes(normalised, active, index, factors, eval_votes, batch_size, rng)
    classifier = np.argmax(train, axis=1)  # latent -> factor it voted for most
    rows = np.arange(train.shape[0])
    return result | {
        "factorvae_score": float(evaluation[rows, classifier].sum() / evaluation.sum()),
        "factorvae_score.train": float(train[rows, classifier].sum() / train.sum()),
    }


@dataclass(frozen=True)
class FactorVaeScoreConfig:
    """disentanglement_lib's settings: votes of ``batch_size`` codes each, the scale from ``variance_images``."""

    batch_size: Annotated[int, Ge(2)] = 64
    train_votes: Annotated[int, Ge(1)] = 5000
    eval_votes: Annotated[int, Ge(1)] = 2500
    variance_images: Annotated[int, Ge(2)] = 10000
    inactive_variance: Annotated[float, Ge(0)] = 0.0


def factorvae_score_metric(inputs, config: FactorVaeScoreConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the FactorVAE score of the representation, keys ``x.factorvae_score...``."""
    scores = factorvae_score(
        inputs.representation,
        inputs.factor_classes,
        inputs.factor_names,
        config.batch_size,
        config.train_votes,
        config.eval_votes,
        config.variance_images,
        config.inactive_variance,
        seed,
    )
    return {f"x.{key}": value for key, value in scores.items()}
