"""beta-VAE and the annealed-capacity beta-VAE, on the shared Gaussian VAE (``base.GaussianVAE``).

beta-VAE (Higgins et al. 2017): loss = recon + w(step) beta KL, w a linear warm-up; neutral point beta = 1.
Annealed capacity (Burgess et al. 2018): loss = recon + gamma |KL - C(step)|, C rising linearly from C_min to
C_max; neutral point gamma = 1, C_min = C_max = 0. Details: docs/stage-one.md, "beta-VAE and annealed capacity".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multistage.models.stage_one.base import (
    ConfigError,
    EncodedBatch,
    GaussianVAE,
    StageOneConfig,
    check_at_least,
    linear_schedule,
)


@dataclass
class BetaVAEConfig(StageOneConfig):
    """beta: weight of the KL (1 = the VAE); warmup_steps: the KL weight rises 0 -> beta over these steps."""

    beta: float = 4.0
    warmup_steps: int = 0

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "beta", "warmup_steps")


class BetaVAE(GaussianVAE):
    """loss = recon + w(step) beta KL (JointVAE eq. 1); logs add regularisation_weight w."""

    def __init__(self, config: BetaVAEConfig | None = None) -> None:
        super().__init__(config or BetaVAEConfig())

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = linear_schedule(step, 0.0, 1.0, self.config.warmup_steps)
        return weight * self.config.beta * batch.kl_per_unit.sum(), {"regularisation_weight": weight}


@dataclass
class AnnealedVAEConfig(StageOneConfig):
    """gamma: weight of |KL - C|; C rises linearly from capacity_min to capacity_max (nats) over capacity_steps
    steps (Burgess et al. 2018 on dSprites: gamma 1000, C 0 -> 25 over 100,000 steps)."""

    gamma: float = 1000.0
    capacity_min: float = 0.0
    capacity_max: float = 25.0
    capacity_steps: int = 100000

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "gamma", "capacity_min", "capacity_steps")
        if self.capacity_max < self.capacity_min:
            raise ConfigError("capacity_max", f"must be >= capacity_min ({self.capacity_min}), got {self.capacity_max}")


def annealed_capacity_penalty(kl: torch.Tensor, capacity: float, gamma: float) -> torch.Tensor:
    """gamma |KL - C| (JointVAE paper eq. 3)."""
    return gamma * (kl - capacity).abs()


class AnnealedVAE(GaussianVAE):
    """loss = recon + gamma |KL - C(step)| (JointVAE eq. 3); logs add capacity C."""

    logged_terms = ("kl", "capacity")

    def __init__(self, config: AnnealedVAEConfig | None = None) -> None:
        super().__init__(config or AnnealedVAEConfig())

    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        capacity = linear_schedule(step, c.capacity_min, c.capacity_max, c.capacity_steps)
        return annealed_capacity_penalty(batch.kl_per_unit.sum(), capacity, c.gamma), {"capacity": capacity}
