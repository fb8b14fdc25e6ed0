"""FactorVAE: Kim & Mnih (2018), "Disentangling by factorising", the standard peer of beta-TCVAE.

loss = recon + KL + w(step) gamma TC_D, the total correlation estimated by a discriminator (the density-ratio
trick on dimension-wise permuted codes). The discriminator is updated inside ``objective`` (training mode only)
with its own Adam, returned by ``auxiliary_state()`` so that checkpoints keep it; ``optimised_parameters()``
leaves it out of the VAE's optimiser. Neutral point: gamma = 0. Details: docs/stage-one.md, "FactorVAE".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from multistage.models.stage_one.base import (
    ConfigError,
    EncodedBatch,
    GaussianVAE,
    StageOneConfig,
    check_at_least,
    linear_schedule,
)


def permute_dimensions(z: torch.Tensor) -> torch.Tensor:
    """Each column of ``z`` (M, L) shuffled independently across rows: a sample of prod_j q(z_j)."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, order)


class Discriminator(nn.Module):
    """Codes (B, latent_dim) -> two logits (q(z), prod_j q(z_j))."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6) -> None:
        super().__init__()
        sizes = [latent_dim] + [hidden] * (layers - 1) + [2]
        modules: list[nn.Module] = []
        for index, (previous, current) in enumerate(zip(sizes[:-1], sizes[1:])):
            modules.append(nn.Linear(previous, current))
            if index < len(sizes) - 2:
                modules.append(nn.LeakyReLU(0.2))
        self.network = nn.Sequential(*modules)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.network(z)


@dataclass
class FactorVAEConfig(StageOneConfig):
    """gamma: weight of the discriminator's TC; discriminator_hidden / discriminator_layers: its width and number
    of linear layers; discriminator_learning_rate: its Adam learning rate (betas 0.5, 0.9); warmup_steps: the TC
    weight rises 0 -> 1 over these steps."""

    gamma: float = 35.0
    discriminator_hidden: int = 1000
    discriminator_layers: int = 6
    discriminator_learning_rate: float = 1e-4
    warmup_steps: int = 0

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "gamma", "warmup_steps")
        check_at_least(self, 1, "discriminator_hidden")
        check_at_least(self, 2, "discriminator_layers")
        if not 0 < self.discriminator_learning_rate <= 1:
            raise ConfigError(
                "discriminator_learning_rate", f"must be in (0, 1], got {self.discriminator_learning_rate}"
            )


class FactorVAE(GaussianVAE):
    """loss = recon + KL + w gamma TC_D; logs add tc (the discriminator's estimate), discriminator_loss,
    discriminator_accuracy (on the batch and its permutation, before the update) and regularisation_weight."""

    logged_terms = ("kl", "tc", "discriminator_accuracy")

    def __init__(self, config: FactorVAEConfig | None = None) -> None:
        super().__init__(config or FactorVAEConfig())
        c = self.config
        self.discriminator = Discriminator(c.latent_dim, c.discriminator_hidden, c.discriminator_layers)
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=c.discriminator_learning_rate, betas=(0.5, 0.9)
        )

    def optimised_parameters(self) -> Iterator[nn.Parameter]:
        discriminator = {id(p) for p in self.discriminator.parameters()}
        return (p for p in self.parameters() if id(p) not in discriminator)

    def auxiliary_state(self) -> dict[str, object]:
        return {"discriminator_optimizer": self.discriminator_optimizer}

    def update_discriminator(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """One Adam step of the discriminator on codes ``z`` (detached) against their dimension-wise permutation;
        returns its loss and accuracy before the step."""
        z = z.detach()
        permuted = permute_dimensions(z)
        logits = self.discriminator(torch.cat([z, permuted]))
        labels = torch.cat(
            [
                torch.zeros(len(z), dtype=torch.long, device=z.device),
                torch.ones(len(z), dtype=torch.long, device=z.device),
            ]
        )
        loss = F.cross_entropy(logits, labels)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"discriminator_loss": loss.detach(), "discriminator_accuracy": accuracy}

    def total_correlation(self, z: torch.Tensor) -> torch.Tensor:
        """TC_D = mean(l0 - l1) over the codes, differentiable in z but not in the discriminator's weights."""
        weights = {name: value.detach() for name, value in self.discriminator.named_parameters()}
        logits = functional_call(self.discriminator, weights, (z,))
        return (logits[:, 0] - logits[:, 1]).mean()

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        terms: dict[str, torch.Tensor | float] = {}
        if self.training and torch.is_grad_enabled():
            terms |= self.update_discriminator(batch.z)
        tc = self.total_correlation(batch.z)
        weight = linear_schedule(step, 0.0, 1.0, c.warmup_steps)
        penalty = batch.kl_per_unit.sum() + weight * c.gamma * tc
        return penalty, {"tc": tc} | terms | {"regularisation_weight": weight}
