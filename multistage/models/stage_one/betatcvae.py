"""beta-TCVAE: Chen et al. (2018), "Isolating Sources of Disentanglement in VAEs", the stage-one model of MS-VAE
(sec. 3.2, "Stage one").

loss = recon + w(step) (alpha index_code_mi + beta tc + gamma dim_kl) (beta-TCVAE eq. 3-5), with one
reparameterised sample per image and the aggregate posterior q(z) and its marginals estimated on the minibatch
itself by one of two estimators: ``"weighted"`` (minibatch weighted sampling, appendix B.1) or ``"stratified"``
(minibatch stratified sampling, appendix B.2; the default, because the weighted estimator saturates).
Whatever the estimator, the three terms add up to the Monte Carlo KL exactly, so alpha = beta = gamma = 1 is the
ELBO. The batch must hold distinct training indices and ``config.dataset_size`` must be N, the number of training
images. The estimators and why the weighted one saturates: docs/stage-one.md, "beta-TCVAE".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from multistage.models.stage_one.base import (
    ConfigError,
    EncodedBatch,
    GaussianVAE,
    StageOneConfig,
    as_unit_float,
    check_at_least,
    gaussian_kl_per_unit,
    gaussian_log_density,
    linear_schedule,
)

__all__ = [
    "BetaTCVAE",
    "BetaTCVAEConfig",
    "as_unit_float",
    "estimate_log_qz",
    "gaussian_kl_per_unit",
    "gaussian_log_density",
    "log_importance_weights",
    "log_qz_stratified",
    "log_qz_weighted",
    "tc_decomposition",
]

ESTIMATORS = ("stratified", "weighted")


# --------------------------------------------------------------------------------------------------------------
# pure functions: densities and the two estimators of log q(z) and log prod_j q(z_j)
# --------------------------------------------------------------------------------------------------------------


def log_density_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(M, M, L) matrix whose [i, j, d] entry is log q(z_id | n_j), for codes z (M, L) and posteriors (M, L)."""
    return gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])


def log_importance_weights(
    batch_size: int,
    dataset_size: int,
    estimator: str = "stratified",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(M, M) log-weights w_ij such that log q(z_i) ~= logsumexp_j (w_ij + log q(z_i|n_j)).

    weighted (eq. S4): every weight 1/(N M). stratified (eq. S5, see the module docstring): 1/N on the diagonal
    and (N - 1)/(N (M - 1)) elsewhere; each row sums to 1.
    """
    M, N = int(batch_size), int(dataset_size)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    if M < 1:
        raise ValueError("the batch must hold at least one code")
    if N < M:
        raise ValueError(f"dataset_size ({N}) must be the number of training images, at least the batch size ({M})")
    if estimator == "weighted":
        return torch.full((M, M), -math.log(N * M), dtype=dtype, device=device)
    if M < 2:
        raise ValueError("the stratified estimator needs at least 2 codes in the batch")
    weights = torch.full((M, M), math.log(N - 1) - math.log(N) - math.log(M - 1), dtype=dtype, device=device)
    weights.fill_diagonal_(-math.log(N))
    return weights


def _log_aggregate_posteriors(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    M = z.shape[0]
    log_weights = log_importance_weights(M, dataset_size, estimator, dtype=z.dtype, device=z.device)
    matrix = log_density_matrix(z, mu, logvar)  # (M, M, L)
    log_qz = torch.logsumexp(log_weights + matrix.sum(dim=2), dim=1)
    log_prod_qzi = torch.logsumexp(log_weights[:, :, None] + matrix, dim=1).sum(dim=1)
    return log_qz, log_prod_qzi


def log_qz_weighted(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MWS (beta-TCVAE sec. 3.2, appendix B.1, eq. S4): per code i, (log q(z_i), log prod_j q(z_ij)), each (M,)."""
    return _log_aggregate_posteriors(z, mu, logvar, dataset_size, "weighted")


def log_qz_stratified(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSS (beta-TCVAE appendix B.2, eq. S5-S7): per code i, (log q(z_i), log prod_j q(z_ij)), each (M,).

    Exact when the batch is the whole data set (M = N)."""
    return _log_aggregate_posteriors(z, mu, logvar, dataset_size, "stratified")


def estimate_log_qz(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int, estimator: str = "stratified"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(z_i), log prod_j q(z_ij)) for a batch of codes z_i ~ q(z|n_i), by the named estimator."""
    return _log_aggregate_posteriors(z, mu, logvar, dataset_size, estimator)


def tc_decomposition(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int, estimator: str = "stratified"
) -> dict[str, torch.Tensor]:
    """Batch means of the three terms of beta-TCVAE eq. 3 (tensors, differentiable)."""
    log_qz_given_n = gaussian_log_density(z, mu, logvar).sum(dim=1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    log_qz, log_prod_qzi = estimate_log_qz(z, mu, logvar, dataset_size, estimator)
    return {
        "index_code_mi": (log_qz_given_n - log_qz).mean(),
        "tc": (log_qz - log_prod_qzi).mean(),
        "dim_kl": (log_prod_qzi - log_pz).mean(),
    }


# --------------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TcPenaltyOptions:
    """The options of the beta-TCVAE penalty (eq. 5), shared by stage one's beta-TCVAE and the stage-two variants
    that learn a code of their own: alpha, beta, gamma weigh its three terms (the paper's beta-TCVAE uses
    alpha = gamma = 1); ``estimator`` is how q(z) is estimated; ``warmup_steps``: the penalty's weight rises
    linearly from 0 to 1 over these steps (0 = none); dataset_size is N, the number of training images."""

    alpha: float = 1.0
    beta: float = 6.0
    gamma: float = 1.0
    estimator: Literal[ESTIMATORS] = "stratified"
    warmup_steps: int = 0
    dataset_size: int = 0

    def check_penalty_options(self) -> None:
        check_at_least(self, 0, "alpha", "beta", "gamma", "warmup_steps", "dataset_size")
        if self.estimator not in ESTIMATORS:
            raise ConfigError("estimator", f"unknown estimator {self.estimator!r}; allowed: {', '.join(ESTIMATORS)}")


@dataclass
class BetaTCVAEConfig(TcPenaltyOptions, StageOneConfig):
    """beta-TCVAE options: the stage-one options and the penalty's (:class:`TcPenaltyOptions`; dataset_size is
    required before ``objective``). Neutral point: alpha = beta = gamma = 1, no warm-up — the ELBO with the Monte
    Carlo KL log q(z|x) - log p(z) on the same sample (the decomposition sums to it exactly)."""

    def validate(self) -> None:
        super().validate()
        self.check_penalty_options()


class BetaTCVAE(GaussianVAE):
    """beta-TCVAE (eq. 5) on the shared Gaussian VAE; see the module docstring for the estimators.

    loss = recon + w(step) (alpha index_code_mi + beta tc + gamma dim_kl); logs add index_code_mi, tc, dim_kl
    and regularisation_weight w."""

    logged_terms = ("index_code_mi", "tc", "dim_kl")

    def __init__(self, config: BetaTCVAEConfig | None = None) -> None:
        super().__init__(config or BetaTCVAEConfig())

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        size = batch.x.shape[0]
        if c.dataset_size < size:
            raise ValueError(
                f"BetaTCVAEConfig.dataset_size ({c.dataset_size}) must be set to the number of training images "
                f"(at least the batch size {size}) before training: the {c.estimator} estimator of q(z) needs it"
            )
        weight = linear_schedule(step, 0.0, 1.0, c.warmup_steps)
        terms = tc_decomposition(batch.z, batch.mu, batch.logvar, c.dataset_size, c.estimator)
        penalty = c.alpha * terms["index_code_mi"] + c.beta * terms["tc"] + c.gamma * terms["dim_kl"]
        return weight * penalty, terms | {"regularisation_weight": weight}
