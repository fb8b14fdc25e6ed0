"""What the stage-two variants that learn a disentangled code C of their own share (beta-TCVAE-L, the end-to-end
and Z-first ablations): the code size |C| and the beta-TCVAE penalty on it.

These variants learn from x alone (``conditioning = "none"``). To compare like with like, the training stage copies
the stage-one model's options of the same name (``stage_one_options``: its latent_dim as ``code_dim``, alpha, beta,
gamma, estimator, warmup_steps) into their config unless the variant's params sub-section sets them, and sets
``dataset_size`` to the number of training images. The penalty is beta-TCVAE eq. 5 (``tc_decomposition`` of
``multistage.models.stage_one.betatcvae``):

    w(step) * (alpha * index_code_mi + beta * tc + gamma * dim_kl)      on the units of C only,

whose sum at alpha = beta = gamma = 1 is the Monte Carlo KL(q(c|x) || p(c)) — the neutral point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from multistage.models.stage_one.base import linear_schedule
from multistage.models.stage_one.betatcvae import TcPenaltyOptions, tc_decomposition
from multistage.models.stage_two.base import ConfigError, StageTwoConfig, StageTwoModel


@dataclass
class CodePenaltyConfig(TcPenaltyOptions, StageTwoConfig):
    """code_dim: |C| (0: set from the stage-one model by the stage); the penalty's options are stage one's
    beta-TCVAE's (:class:`TcPenaltyOptions`: alpha, beta, gamma, estimator, warmup_steps, dataset_size)."""

    code_dim: int = 10

    def validate(self) -> None:
        super().validate()
        if int(self.code_dim) < 1:
            raise ConfigError("code_dim", f"must be >= 1, got {self.code_dim}")
        self.check_penalty_options()


class CodeModel(StageTwoModel):
    """A "none"-conditioned variant whose latent is (C, Z): ``generate(None, latent)`` takes the whole latent of
    width ``latent_dim = code_dim + residual_dim`` (C first), ``infer_residual(x, None)`` returns it, and
    ``code(x)`` the units the model calls C (``code_units``)."""

    conditioning: ClassVar[str] = "none"
    stage_one_options: ClassVar[tuple[str, ...]] = ("code_dim", "alpha", "beta", "gamma", "estimator", "warmup_steps")
    config: CodePenaltyConfig

    @property
    def code_dim(self) -> int:
        return int(self.config.code_dim)

    @property
    def latent_dim(self) -> int:
        return self.code_dim + self.residual_dim

    @property
    def code_units(self) -> slice:
        """The units of the latent that form C (all of them unless the model splits C and Z)."""
        return slice(0, self.code_dim)

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer_residual(x, None)[:, self.code_units]

    def code_penalty(
        self, c: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, step: int | None, start_step: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The weighted beta-TCVAE penalty on the code sample ``c`` ~ N(mu, exp(logvar)) (each (B, |C|)); the
        warm-up starts at ``start_step``. Returns (penalty, terms)."""
        config = self.config
        if config.dataset_size < len(c):
            raise ValueError(
                f"{type(self).__name__}: dataset_size ({config.dataset_size}) must be set to the number "
                f"of training images (at least the batch size {len(c)}) before training"
            )
        weight = linear_schedule(None if step is None else step - start_step, 0.0, 1.0, config.warmup_steps)
        terms = tc_decomposition(c, mu, logvar, config.dataset_size, config.estimator)
        penalty = config.alpha * terms["index_code_mi"] + config.beta * terms["tc"] + config.gamma * terms["dim_kl"]
        return weight * penalty, terms | {"regularisation_weight": weight}
