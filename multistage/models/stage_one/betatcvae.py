"""beta-TCVAE: Chen et al. (2018), "Isolating Sources of Disentanglement in VAEs" — the stage-one model of MS-VAE
(sec. 3.2, "Stage one").

Objective (beta-TCVAE eq. 3-5), minimised per minibatch of M images drawn from a training set of N:

    loss = recon + alpha * index_code_mi + beta * tc + gamma * dim_kl

    recon          = -E_q(z|n)[log p(x_n|z)]      Bernoulli decoder: BCE with logits summed over pixels, batch mean
    index_code_mi  =  E_q(z,n)[log q(z|n) - log q(z)]                (eq. 3 term i)
    tc             =  E_q(z)[log q(z) - log prod_j q(z_j)]          (eq. 3 term ii, total correlation)
    dim_kl         =  E_q(z)[log prod_j q(z_j) - log p(z)]          (eq. 3 term iii, dimension-wise KL)

with one reparameterised sample z_i ~ q(z|n_i) per image. The aggregate posterior q(z) = 1/N sum_n q(z|n) and its
marginals q(z_j) are estimated from the minibatch itself (appendix B.2.1: "we use the same minibatch that was used
to sample z"), by one of two estimators:

* ``"weighted"`` — minibatch weighted sampling, MWS (sec. 3.2 and appendix B.1, eq. S4):
      log q(z_i) ~= logsumexp_j log q(z_i|n_j) - log(N M)
* ``"stratified"`` — minibatch stratified sampling, MSS (appendix B.2, eq. S5-S7). Conditioned on n_i being in the
  batch, the other M - 1 indices are a uniform sample without replacement of the N - 1 others, so
      q(z_i) ~= 1/N q(z_i|n_i) + (N - 1) / (N (M - 1)) sum_{j != i} q(z_i|n_j)
  is unbiased for q(z_i) = 1/N q(z_i|n_i) + (N-1)/N E_{n != n_i}[q(z_i|n)] (eq. S5). Eq. S6 gives one of the
  "other" elements the weight (N - M)/(N M) and the rest 1/M; it has the same expectation, but with equal weights
  the estimate is *exact* when the batch is the whole data set (M = N: every weight is 1/N), which is the
  statement the paper makes for MSS ("exact if M = N", "the equality holds if M = N"). As a log it is a lower
  bound in expectation (Jensen, eq. S8-S9) whose bias shrinks as M grows.
  The product of marginals uses the same weights one dimension at a time.

Why stratified is the default — the weighted estimator saturates. Because the sum over the batch contains the
own component, MWS gives log q(z_i) >= log q(z_i|n_i) - log(N M), so its index-code-MI estimate
mean_i[log q(z_i|n_i) - log q(z_i)] is at most log(N M) = log N + log M, reached as soon as the posteriors of the
M batch elements stop overlapping (off-diagonal densities -> 0), which for small M happens early in training.
The true index-code MI is at most H(n) = log N, so MWS saturates log M nats *above* anything attainable; once
saturated its log q(z) is just log q(z|n) - log(N M): it no longer sees how the codes of different images are
arranged, the alpha term reduces to an entropy bonus and log q(z) in the TC term carries no signal. More
generally, for a batch of distinct indices MWS's log q(z_i) is at least log M below the exact value (the batch
sum is at most the full sum), and at M = N exactly log N below it (log prod_j q(z_j): exactly L log N below,
L = latent_dim), so there it over-estimates the index-code MI by log N and the TC by (L - 1) log N and
under-estimates the dimension-wise KL by L log N: the bias never vanishes as M -> N. MSS gives
log q(z_i) >= log q(z_i|n_i) - log N, so its index-code MI is at most log N, the true ceiling, and it is exact at
M = N. With a small batch MSS still misses the near neighbours a large data set provides and under-estimates
q(z), so use batch >= 256 on dSprites (N = 737,280).
Whatever the estimator, index_code_mi + tc + dim_kl = E[log q(z|n) - log p(z)] exactly (the Monte Carlo KL), so
with alpha = beta = gamma = 1 the objective is the ordinary ELBO.

The batch is assumed to hold distinct training indices (the stratified weights rely on it);
``config.dataset_size`` must be the number of training images N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from multistage.data.base import to_float
from multistage.nn.conv import ConvDecoder, ConvEncoder, check_image_size

ESTIMATORS = ("stratified", "weighted")
LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------------------
# pure functions: densities and the two estimators of log q(z) and log prod_j q(z_j)
# --------------------------------------------------------------------------------------------------------------


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting), -1/2 (log 2 pi + logvar + (z - mu)^2 / exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def gaussian_kl_per_unit(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, exp(logvar)) || N(0, 1)) per element: 1/2 (mu^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)


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
        raise ValueError(
            f"dataset_size ({N}) must be the number of training images, at least the batch size ({M})"
        )
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


# uint8 images -> float32 in [0, 1]; floats pass through (the one conversion, shared with the data layer)
as_unit_float = to_float


# --------------------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BetaTCVAEConfig:
    """beta-TCVAE hyper-parameters. alpha, beta, gamma weigh the three terms of eq. 5 (the paper's beta-TCVAE
    uses alpha = gamma = 1); dataset_size is N, the number of training images (required before ``objective``)."""

    image_channels: int = 1
    image_size: int = 64
    latent_dim: int = 10
    alpha: float = 1.0
    beta: float = 6.0
    gamma: float = 1.0
    estimator: str = "stratified"
    dataset_size: int = 0

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        if self.image_channels < 1 or self.latent_dim < 1:
            raise ValueError("image_channels and latent_dim must be >= 1")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; allowed: {', '.join(ESTIMATORS)}")
        if self.dataset_size < 0:
            raise ValueError("dataset_size must be >= 0 (0 = not set yet)")


class BetaTCVAE(nn.Module):
    """Gaussian encoder q(z|x) and Bernoulli decoder p(x|z) (disentanglement_lib conv networks), trained with
    the beta-TCVAE objective (eq. 5); see the module docstring for the estimators."""

    def __init__(self, config: BetaTCVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or BetaTCVAEConfig()
        c = self.config
        self.encoder = ConvEncoder(c.image_channels, c.image_size, 2 * c.latent_dim)
        self.decoder = ConvDecoder(c.latent_dim, c.image_channels, c.image_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W), uint8 or float in [0, 1] -> (mu, logvar) of q(z|x), each (B, latent_dim)."""
        mu, logvar = self.encoder(as_unit_float(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) -> Bernoulli logits (B, C, H, W)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling, 2014)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, use_mean: bool = True) -> torch.Tensor:
        """Probabilities sigmoid(decode(z)) with z the posterior mean (or a sample when ``use_mean`` is False)."""
        mu, logvar = self.encode(x)
        return torch.sigmoid(self.decode(mu if use_mean else self.reparameterize(mu, logvar)))

    def objective(
        self, x: torch.Tensor, regularisation_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logs) for a batch of distinct training images; loss = recon + w (alpha MI + beta TC + gamma dimKL)
        (beta-TCVAE eq. 5, w = 1). ``regularisation_weight`` w < 1 is a warm-up (``multistage.train.linear_warmup``).
        logs: loss, recon, kl (analytic KL(q(z|x)||p(z)) summed over units, batch mean), index_code_mi, tc, dim_kl,
        kl_unit.<j> (analytic KL per unit, batch mean), regularisation_weight."""
        c = self.config
        x = as_unit_float(x)
        batch = x.shape[0]
        if c.dataset_size < batch:
            raise ValueError(
                f"BetaTCVAEConfig.dataset_size ({c.dataset_size}) must be set to the number of training images "
                f"(at least the batch size {batch}) before training: the {c.estimator} estimator of q(z) needs it"
            )
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
        terms = tc_decomposition(z, mu, logvar, c.dataset_size, c.estimator)
        penalty = c.alpha * terms["index_code_mi"] + c.beta * terms["tc"] + c.gamma * terms["dim_kl"]
        loss = recon + regularisation_weight * penalty
        with torch.no_grad():
            kl_per_unit = gaussian_kl_per_unit(mu, logvar).mean(dim=0)
            names = ["loss", "recon", "kl", "index_code_mi", "tc", "dim_kl"]
            names += [f"kl_unit.{j}" for j in range(c.latent_dim)]
            values = torch.stack(
                [loss, recon, kl_per_unit.sum(), terms["index_code_mi"], terms["tc"], terms["dim_kl"]]
            )
            values = torch.cat([values.detach(), kl_per_unit]).tolist()  # one device sync for all the logs
        logs = dict(zip(names, values))
        logs["regularisation_weight"] = float(regularisation_weight)
        return loss, logs
