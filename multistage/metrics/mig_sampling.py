"""Mutual information gap (MIG), sampling estimator of the beta-TCVAE paper (Chen et al. 2018, section 4.1
eq. 6-7, appendix A.1 eq. S1).

I(z_j; v_k) = H(z_j) - H(z_j | v_k), each entropy an expectation of log q(z_j) (or log q(z_j | v_k)) under one
sample z_n ~ q(z|x_n) per image, stratified over the data set (appendix A.1); every log-density is a log-sum over
the full mixture of N (or |X_v|) components, evaluated by ``aggregate_posterior.grid_log_density`` (or
``method="exact"``, the logsumexp, for small N). MIG = 1/K sum_k (I_top1 - I_top2) / H(v_k).

Normalisation (appendix A.2): ``normalization="log_size"`` divides by log(size_k), H(v_k) of a uniform factor;
``"empirical"`` by the plug-in entropy of the sample's classes. ``exclude_factors`` adds a second mean without
them (dSprites' shape: beta-TCVAE includes it, later work often leaves it out).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge, Gt, Le
from sklearn.metrics import mutual_info_score

from multistage.metrics.aggregate_posterior import GridSettings, grouped_log_density, split_groups
from multistage.metrics.checks import check_codes, check_factors, varying_factors

__all__ = ["sampling_mutual_information", "sampling_mutual_information_gap", "MigSamplingConfig", "mig_sampling_metric"]

NORMALIZATIONS = ("log_size", "empirical")


def sampling_mutual_information(
    mu: np.ndarray,
    logvar: np.ndarray,
    factor_classes: np.ndarray,
    samples: np.ndarray | None = None,
    rng: np.random.Generator | int | None = 0,
    method: str = "grid",
    settings: GridSettings | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I(z_j; v_k) (D, K), H(z_j) (D,) and H(z_j | v_k) (D, K) in nats, by appendix A.1 eq. S1 (module docstring).

    ``samples``: the z_n ~ q(z|x_n) to use (N, D); drawn as mu + exp(logvar / 2) * eps with ``rng`` when None.
    ``workers``: latents scored in parallel threads.
    """
    mu = check_codes(mu, "mu")
    logvar = check_codes(logvar, "logvar", mu.shape[1])
    if logvar.shape != mu.shape:
        raise ValueError(f"mu {mu.shape} and logvar {logvar.shape} differ in shape")
    factor_classes = np.asarray(factor_classes)
    sigma = np.exp(0.5 * logvar)
    if samples is None:
        samples = mu + sigma * np.random.default_rng(rng).standard_normal(mu.shape)
    samples = check_codes(samples, "samples", mu.shape[1])
    num_latents, num_factors = mu.shape[1], factor_classes.shape[1]
    marginal = [np.arange(mu.shape[0])]
    strata = [split_groups(factor_classes[:, k]) for k in range(num_factors)]  # X_v for every value v of v_k
    entropy = np.empty(num_latents)
    conditional = np.empty((num_latents, num_factors))

    def latent(j: int) -> None:
        entropy[j] = -grouped_log_density(samples[:, j], mu[:, j], sigma[:, j], marginal, settings, method).mean()
        for k in range(num_factors):
            conditional[j, k] = -grouped_log_density(
                samples[:, j], mu[:, j], sigma[:, j], strata[k], settings, method
            ).mean()

    if workers > 1:  # numpy and scipy.fft release the GIL: latents in parallel threads
        with ThreadPoolExecutor(min(workers, num_latents)) as pool:
            list(pool.map(latent, range(num_latents)))
    else:
        for j in range(num_latents):
            latent(j)
    return entropy[:, None] - conditional, entropy, conditional


def sampling_mutual_information_gap(
    mu: np.ndarray,
    logvar: np.ndarray,
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    factor_sizes: Sequence[int] | None = None,
    exclude_factors: Sequence[str] = (),
    normalization: str = "log_size",
    samples: np.ndarray | None = None,
    rng: np.random.Generator | int | None = 0,
    method: str = "grid",
    settings: GridSettings | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """MIG with the sampling estimator (beta-TCVAE eq. 7 with eq. S1), over the N images whose posteriors are given.

    Args:
        mu, logvar: (N, D) Gaussian posterior parameters of q(z|x_n) for every image of the factor set (ideally the
            full grid).
        factor_classes: int (N, K) class of each factor per image; factor_names: the K names (used in the keys).
        factor_sizes: the K factor sizes (needed for ``normalization="log_size"``).
        exclude_factors: factors left out of the additional mean ``mig.sampling.no_<f>...``.
        normalization: "log_size" (H(v_k) = log size_k, a uniform factor) or "empirical" (plug-in H(v_k)).
        samples, rng, method, settings, workers: see ``sampling_mutual_information``.

    Returns a flat dict: "mig.sampling" (mean over factors with H(v_k) > 0), "mig.sampling.<factor>" (the
    normalised gap; NaN for a factor with a single value, left out of the means), "mig.sampling.no_<f>" when
    ``exclude_factors`` is given. With a single latent the second-best MI is 0. A constant latent has
    H(z_j | v_k) = H(z_j), so I = 0 (up to the sampling noise).
    """
    factor_names = tuple(factor_names)
    mu = check_codes(mu, "mu")
    factor_classes = check_factors(factor_classes, factor_names, mu.shape[0])
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
    unknown = [name for name in exclude_factors if name not in factor_names]
    if unknown:
        raise ValueError(f"exclude_factors {unknown} are not factors; factors are {list(factor_names)}")
    if normalization == "log_size":
        if factor_sizes is None or len(factor_sizes) != len(factor_names):
            raise ValueError("normalization='log_size' needs factor_sizes, one per factor")
        entropies = np.log(np.asarray(factor_sizes, dtype=np.float64))
    else:
        entropies = np.array([mutual_info_score(column, column) for column in factor_classes.T])

    information, _, _ = sampling_mutual_information(mu, logvar, factor_classes, samples, rng, method, settings, workers)
    ordered = np.sort(information, axis=0)[::-1]
    top1 = ordered[0]
    top2 = ordered[1] if ordered.shape[0] > 1 else np.zeros_like(top1)
    valid = (entropies > 0) & varying_factors(factor_classes)
    gaps = np.full(len(factor_names), np.nan)
    gaps[valid] = (top1[valid] - top2[valid]) / entropies[valid]

    def mean_over(mask: np.ndarray) -> float:
        values = gaps[mask & np.isfinite(gaps)]
        return float(values.mean()) if values.size else float("nan")

    result = {"mig.sampling": mean_over(np.ones(len(factor_names), dtype=bool))}
    result |= {f"mig.sampling.{name}": float(gap) for name, gap in zip(factor_names, gaps)}
    if exclude_factors:
        keep = np.array([name not in exclude_factors for name in factor_names])
        result["mig.sampling.no_" + "_".join(exclude_factors)] = mean_over(keep)
    return result


@dataclass(frozen=True)
class MigSamplingConfig:
    """``normalization``: log_size = H(v_k) of a uniform factor, empirical = the plug-in entropy; the grid
    estimator's accuracy (``points_per_sigma``, ``level_ratio``, see ``aggregate_posterior``); ``workers``: latents
    scored in parallel threads, 0 = torch's thread count."""

    normalization: Literal["log_size", "empirical"] = "log_size"
    points_per_sigma: Annotated[float, Ge(2)] = 8.0
    level_ratio: Annotated[float, Gt(1), Le(2)] = 1.01
    workers: Annotated[int, Ge(0)] = 0


def mig_sampling_metric(inputs, config: MigSamplingConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the sampling MIG of the factor set's posteriors, keys ``x.mig.sampling...``."""
    import torch

    scores = sampling_mutual_information_gap(
        inputs.mu,
        inputs.logvar,
        inputs.factor_classes,
        inputs.factor_names,
        inputs.factor_sizes,
        inputs.exclude_factors,
        config.normalization,
        rng=seed,
        settings=GridSettings(config.points_per_sigma, config.level_ratio),
        workers=config.workers or torch.get_num_threads(),
    )
    return {f"x.{key}": value for key, value in scores.items()}
