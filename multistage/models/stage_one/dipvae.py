"""DIP-VAE-I and DIP-VAE-II: Kumar et al. (2018), "Variational inference of disentangled latent concepts from
unlabeled observations" (the DIP-VAE paper, sec. 3), on the shared Gaussian VAE.

Both add to the ELBO a penalty pulling a minibatch covariance towards the identity (off-diagonal weight
lambda_od, diagonal lambda_d, optional third moments lambda_third): of the encoder means for DIP-VAE-I (eq. 6),
of q(z) for DIP-VAE-II (eq. 7). Neutral point: all three lambdas 0. Details: docs/stage-one.md, "DIP-VAE".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from multistage.models.stage_one.base import (
    ConfigError,
    EncodedBatch,
    GaussianVAE,
    StageOneConfig,
    check_at_least,
    linear_schedule,
)

VARIANTS = ("i", "ii")


def batch_covariance(values: torch.Tensor) -> torch.Tensor:
    """Biased covariance (L, L) of the rows of ``values`` (M, L)."""
    centred = values - values.mean(dim=0, keepdim=True)
    return centred.T @ centred / values.shape[0]


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, variant: str) -> torch.Tensor:
    """Cov_p(x)[mu(x)] (DIP-VAE-I, eq. 6) or Cov_q(z)[z] = E[Sigma(x)] + Cov[mu(x)] (DIP-VAE-II, eq. 5, 7)."""
    covariance = batch_covariance(mu)
    if variant == "ii":
        covariance = covariance + torch.diag(torch.exp(logvar).mean(dim=0))
    elif variant != "i":
        raise ValueError(f"unknown DIP-VAE variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return covariance


def dip_penalty(
    covariance: torch.Tensor, lambda_od: float, lambda_d: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(penalty, off-diagonal sum of squares, diagonal sum of (Cov_ii - 1)^2) of eq. 6/7; 0 exactly at Cov = I."""
    diagonal = torch.diagonal(covariance)
    off_diagonal = (covariance**2).sum() - (diagonal**2).sum()
    on_diagonal = ((diagonal - 1.0) ** 2).sum()
    return lambda_od * off_diagonal + lambda_d * on_diagonal, off_diagonal, on_diagonal


def third_moment_norm(values: torch.Tensor) -> torch.Tensor:
    """sum_{ijk} M3_ijk^2, M3 the (L, L, L) third central moments of the rows of ``values`` (M, L)."""
    centred = values - values.mean(dim=0, keepdim=True)
    moments = torch.einsum("ni,nj,nk->ijk", centred, centred, centred) / values.shape[0]
    return (moments**2).sum()


@dataclass
class DIPVAEConfig(StageOneConfig):
    """variant: "i" (Cov of the means, eq. 6) or "ii" (Cov of q(z), eq. 7); lambda_od, lambda_d: weights of the
    off-diagonal and diagonal terms; lambda_third: weight of the third-moment penalty (0 = off);
    warmup_steps: the DIP penalty's weight rises 0 -> 1 over these steps."""

    variant: Literal[VARIANTS] = "ii"
    lambda_od: float = 10.0
    lambda_d: float = 10.0
    lambda_third: float = 0.0
    warmup_steps: int = 0

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ConfigError("variant", f"unknown DIP-VAE variant {self.variant!r}; allowed: {', '.join(VARIANTS)}")
        check_at_least(self, 0, "lambda_od", "lambda_d", "lambda_third", "warmup_steps")


class DIPVAE(GaussianVAE):
    """loss = recon + KL + w(step) (DIP penalty); logs add dip_off_diagonal, dip_diagonal, dip_third_moment
    (when lambda_third > 0) and regularisation_weight w."""

    logged_terms = ("kl", "dip_off_diagonal", "dip_diagonal")

    def __init__(self, config: DIPVAEConfig | None = None) -> None:
        super().__init__(config or DIPVAEConfig())

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        covariance = dip_covariance(batch.mu, batch.logvar, c.variant)
        penalty, off_diagonal, on_diagonal = dip_penalty(covariance, c.lambda_od, c.lambda_d)
        terms = {"dip_off_diagonal": off_diagonal, "dip_diagonal": on_diagonal}
        if c.lambda_third > 0:
            third = third_moment_norm(batch.mu if c.variant == "i" else batch.z)
            penalty = penalty + c.lambda_third * third
            terms["dip_third_moment"] = third
        weight = linear_schedule(step, 0.0, 1.0, c.warmup_steps)
        return batch.kl_per_unit.sum() + weight * penalty, terms | {"regularisation_weight": weight}
