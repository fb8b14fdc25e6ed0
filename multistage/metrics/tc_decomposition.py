"""The ELBO TC-decomposition over the whole data set (beta-TCVAE paper, eq. 3 and appendix B).

    E_p(n)[KL(q(z|n) || p(z))] = index-code MI + total correlation + dimension-wise KL

with q(z) the aggregate posterior of the whole data set (not a minibatch, unlike the training estimators of
appendix B.1-B.2). Each term is estimated with S samples z_s ~ q(z|n_s) at distinct indices: log q(z_s) over all
N components (``aggregate_posterior.joint_log_density``), the marginals log q(z_sj) with the grid estimator. The
three terms add up to a Monte Carlo estimate of the average KL, whose analytic value is reported beside them
(``average_kl``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Gt, Le

from multistage.metrics.aggregate_posterior import GridSettings, grid_log_density, joint_log_density
from multistage.metrics.checks import check_codes

__all__ = ["tc_decomposition", "TcDecompositionConfig", "tc_decomposition_metric"]

LOG_2PI = math.log(2.0 * math.pi)


def tc_decomposition(
    mu: np.ndarray,
    logvar: np.ndarray,
    samples: int = 2000,
    rng: np.random.Generator | int | None = 0,
    settings: GridSettings | None = None,
) -> dict[str, float]:
    """The decomposition of the average KL for the posteriors (mu, logvar) (N, D) of a whole data set.

    Returns {"tc_decomposition.index_code_mi", ".total_correlation", ".dimension_wise_kl", ".sum" (of the three),
    ".monte_carlo_kl" (the same samples' mean log q(z|n) - log p(z); equals the sum), ".average_kl" (analytic, all
    N), ".monte_carlo_error" (standard error of the Monte Carlo KL), ".samples"} in nats.
    """
    mu = check_codes(mu, "mu")
    logvar = check_codes(logvar, "logvar", mu.shape[1])
    if logvar.shape != mu.shape:
        raise ValueError(f"mu {mu.shape} and logvar {logvar.shape} differ in shape")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(rng)
    count = mu.shape[0]
    chosen = np.sort(rng.choice(count, size=min(samples, count), replace=False))
    sigma = np.exp(0.5 * logvar)
    z = mu[chosen] + sigma[chosen] * rng.standard_normal((chosen.size, mu.shape[1]))

    log_q_z_given_n = (-0.5 * (LOG_2PI + logvar[chosen] + ((z - mu[chosen]) / sigma[chosen]) ** 2)).sum(axis=1)
    log_p_z = (-0.5 * (LOG_2PI + z**2)).sum(axis=1)
    log_q_z = joint_log_density(z, mu, logvar, own_component=chosen)
    log_prod_marginals = np.zeros(chosen.size)
    for j in range(mu.shape[1]):
        log_prod_marginals += grid_log_density(z[:, j], mu[:, j], sigma[:, j], own_component=chosen, settings=settings)

    index_code = log_q_z_given_n - log_q_z
    total_correlation = log_q_z - log_prod_marginals
    dimension_wise = log_prod_marginals - log_p_z
    monte_carlo = log_q_z_given_n - log_p_z
    analytic = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).sum(axis=1)
    prefix = "tc_decomposition"
    return {
        f"{prefix}.index_code_mi": float(index_code.mean()),
        f"{prefix}.total_correlation": float(total_correlation.mean()),
        f"{prefix}.dimension_wise_kl": float(dimension_wise.mean()),
        f"{prefix}.sum": float(index_code.mean() + total_correlation.mean() + dimension_wise.mean()),
        f"{prefix}.monte_carlo_kl": float(monte_carlo.mean()),
        f"{prefix}.monte_carlo_error": float(monte_carlo.std(ddof=1) / math.sqrt(chosen.size))
        if chosen.size > 1
        else float("nan"),
        f"{prefix}.average_kl": float(analytic.mean()),
        f"{prefix}.samples": float(chosen.size),
    }


@dataclass(frozen=True)
class TcDecompositionConfig:
    """``samples`` of q(z, n), the log q(z) of each a sum over all N images; the grid estimator's accuracy."""

    samples: Annotated[int, Ge(2)] = 2000
    points_per_sigma: Annotated[float, Ge(2)] = 8.0
    level_ratio: Annotated[float, Gt(1), Le(2)] = 1.01


def tc_decomposition_metric(inputs, config: TcDecompositionConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the TC decomposition of the factor set's posteriors."""
    return tc_decomposition(
        inputs.mu, inputs.logvar, config.samples, seed, GridSettings(config.points_per_sigma, config.level_ratio)
    )
