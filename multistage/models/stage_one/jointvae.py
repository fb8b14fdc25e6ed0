"""JointVAE: Dupont (2018), "Learning disentangled joint continuous and discrete representations", on the shared
Gaussian VAE.

The code is a continuous part z (``latent_dim`` Gaussian units) and discrete parts c_i with K_i values each
(``discrete_dims``). loss = recon + gamma_z |KL_z - C_z(step)| + gamma_c |KL_c - C_c(step)| (eq. 7), the
capacities rising linearly (C_c capped at sum log K_i), KL_c analytic against the uniform prior, and the decoder
fed a Gumbel-softmax sample at ``temperature``. Neutral point: gamma_z = gamma_c = 1, zero capacities. Defaults:
the paper's MNIST settings (appendix C.1). Details: docs/stage-one.md, "JointVAE".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from multistage.models.stage_one.base import (
    UNIFORM_EPSILON,
    ConfigError,
    EncodedBatch,
    GaussianVAE,
    StageOneConfig,
    as_unit_float,
    check_at_least,
    gaussian_from_uniforms,
    linear_schedule,
)


def discrete_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits)) || Uniform(K)) per row, = sum_k alpha_k log alpha_k + log K (analytic)."""
    log_alpha = F.log_softmax(logits, dim=-1)
    return (log_alpha.exp() * log_alpha).sum(dim=-1) + math.log(logits.shape[-1])


def gumbel_from_uniforms(uniforms: torch.Tensor) -> torch.Tensor:
    """g = -log(-log u) ~ Gumbel(0, 1) (JointVAE paper footnote 2)."""
    u = uniforms.clamp(UNIFORM_EPSILON, 1.0 - UNIFORM_EPSILON)
    return -torch.log(-torch.log(u))


def categorical_from_gumbel(logits: torch.Tensor, gumbel: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """softmax((log alpha + g) / tau) (eq. 8) when ``temperature`` is given, else the one-hot of
    argmax(log alpha + g) (Gumbel-max: an exact categorical sample)."""
    scores = F.log_softmax(logits, dim=-1) + gumbel
    if temperature is None:
        return F.one_hot(scores.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    return F.softmax(scores / temperature, dim=-1)


@dataclass
class JointVAEConfig(StageOneConfig):
    """latent_dim: continuous units; discrete_dims: K_i of each discrete code; temperature: of the Gumbel-softmax;
    gamma_z, gamma_c: weights of the two capacity terms; capacity_z_max / capacity_c_max (nats) reached after
    capacity_z_steps / capacity_c_steps steps (linear from 0)."""

    discrete_dims: tuple[int, ...] = (10,)
    temperature: float = 0.67
    gamma_z: float = 30.0
    gamma_c: float = 30.0
    capacity_z_max: float = 5.0
    capacity_z_steps: int = 25000
    capacity_c_max: float = 5.0
    capacity_c_steps: int = 25000

    def validate(self) -> None:
        super().validate()
        self.discrete_dims = tuple(int(k) for k in self.discrete_dims)
        if not self.discrete_dims or min(self.discrete_dims) < 2:
            raise ConfigError(
                "discrete_dims",
                f"must list at least one discrete code, each with >= 2 values, got {list(self.discrete_dims)}",
            )
        if not self.temperature > 0:
            raise ConfigError("temperature", f"must be > 0, got {self.temperature}")
        check_at_least(
            self, 0, "gamma_z", "gamma_c", "capacity_z_max", "capacity_z_steps", "capacity_c_max", "capacity_c_steps"
        )

    @property
    def max_discrete_capacity(self) -> float:
        """sum_i log K_i: the information the discrete codes can carry at most."""
        return float(sum(math.log(k) for k in self.discrete_dims))


class JointVAE(GaussianVAE):
    """Continuous + discrete codes (eq. 7). Code layout: z (latent_dim) then one block of K_i per discrete code.
    Logs add kl_z, kl_c, capacity_z, capacity_c, kl_discrete.<i>; ``kl`` is kl_z + kl_c."""

    logged_terms = ("kl_z", "kl_c", "capacity_z", "capacity_c")

    def __init__(self, config: JointVAEConfig | None = None) -> None:
        super().__init__(config or JointVAEConfig())

    @property
    def discrete_dims(self) -> tuple[int, ...]:
        return tuple(self.config.discrete_dims)

    @property
    def encoder_features(self) -> int:
        return 2 * self.latent_dim + sum(self.discrete_dims)

    @property
    def decoder_features(self) -> int:
        return self.latent_dim + sum(self.discrete_dims)

    @property
    def code_names(self) -> list[str]:
        names = [f"z{j}" for j in range(self.latent_dim)]
        return names + [f"c{i}={k}" for i, size in enumerate(self.discrete_dims) for k in range(size)]

    @property
    def noise_width(self) -> int:
        return self.latent_dim + sum(self.discrete_dims)

    def posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """mu, logvar (N, latent_dim) and the unnormalised log-probabilities ``logits`` (N, sum K_i)."""
        features = self.encoder(as_unit_float(x))
        latent = self.latent_dim
        return {
            "mu": features[:, :latent],
            "logvar": features[:, latent : 2 * latent],
            "logits": features[:, 2 * latent :],
        }

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.posterior(x)
        return posterior["mu"], posterior["logvar"]

    def discrete_probabilities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """alpha_i = q(c_i|x), one (N, K_i) tensor per discrete code."""
        return [F.softmax(block, dim=-1) for block in self.posterior(x)["logits"].split(self.discrete_dims, 1)]

    def code_from_uniforms(
        self, posterior: dict[str, torch.Tensor], uniforms: torch.Tensor, relaxed: bool = False
    ) -> torch.Tensor:
        latent = self.latent_dim
        z = gaussian_from_uniforms(posterior["mu"], posterior["logvar"], uniforms[:, :latent])
        gumbel = gumbel_from_uniforms(uniforms[:, latent:].to(z.dtype))
        temperature = self.config.temperature if relaxed else None
        blocks = [
            categorical_from_gumbel(logits, g, temperature)
            for logits, g in zip(posterior["logits"].split(self.discrete_dims, 1), gumbel.split(self.discrete_dims, 1))
        ]
        return torch.cat([z, *blocks], dim=1)

    def representation_from_posterior(self, posterior: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = [
            F.one_hot(block.argmax(dim=-1), block.shape[-1]).to(block.dtype)
            for block in posterior["logits"].split(self.discrete_dims, 1)
        ]
        return torch.cat([posterior["mu"], *blocks], dim=1)

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        kl_z = batch.kl_per_unit.sum()
        kl_discrete = torch.stack(
            [discrete_kl_uniform(block).mean() for block in batch.posterior["logits"].split(self.discrete_dims, 1)]
        )
        kl_c = kl_discrete.sum()
        capacity_z = linear_schedule(step, 0.0, c.capacity_z_max, c.capacity_z_steps)
        capacity_c = min(linear_schedule(step, 0.0, c.capacity_c_max, c.capacity_c_steps), c.max_discrete_capacity)
        penalty = c.gamma_z * (kl_z - capacity_z).abs() + c.gamma_c * (kl_c - capacity_c).abs()
        terms = {"kl": kl_z + kl_c, "kl_z": kl_z, "kl_c": kl_c, "capacity_z": capacity_z, "capacity_c": capacity_c}
        terms |= {f"kl_discrete.{i}": value for i, value in enumerate(kl_discrete)}
        return penalty, terms
