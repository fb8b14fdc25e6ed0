"""MS-GAN: MS-VAE appendix E. Stage two (Y, Z) -> X as a conditional GAN whose conditioning variable is an image,
as in pix2pix: the discriminator judges the pair [x, y] or [G(y, z), y].

The generator is MS-VAE's AdaIN encoder-decoder (``msvae.AdaINDecoder``: z only through AdaIN, output starting at
y); the discriminator is a DCGAN with spectral normalisation; the loss is ``nonsaturating`` (default) or
``hinge``. ``objective`` first takes one Adam step of the discriminator (its own optimiser, returned by
``auxiliary_state()``), then returns the generator's loss; ``optimised_parameters()`` is the generator. No
encoder: ``infer_residual`` raises NotImplementedError. Details: docs/stage-two.md, "The MS-GAN model in detail".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from multistage.models.stage_two.base import (
    ConfigError,
    StageTwoConfig,
    StageTwoModel,
    as_unit_float,
    check_non_negative,
    check_positive,
)
from multistage.models.stage_two.msvae import AdaINDecoder

GAN_LOSSES = ("nonsaturating", "hinge")
DISCRIMINATOR_NORMS = ("spectral", "none")


class PairDiscriminator(nn.Module):
    """DCGAN-style discriminator of image pairs: D([x, y]) -> one logit per pair (module docstring)."""

    def __init__(self, image_channels: int, image_size: int, base_channels: int = 32, norm: str = "spectral") -> None:
        super().__init__()
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"norm must be one of {DISCRIMINATOR_NORMS}, got {norm!r}")
        wrap = spectral_norm if norm == "spectral" else (lambda module: module)
        layers: list[nn.Module] = []
        previous, width, size = 2 * image_channels, base_channels, image_size
        while size > 4:
            layers += [wrap(nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            previous, width, size = width, 2 * width, size // 2
        layers.append(wrap(nn.Conv2d(previous, 1, kernel_size=4, stride=1, padding=0)))
        self.network = nn.Sequential(*layers)
        self.image_channels = int(image_channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits (N,) of the pairs [x, y] (channels concatenated)."""
        return self.network(torch.cat([x, y], dim=1)).reshape(-1)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` excluded from autograd inside the block (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """D's loss (batch mean) for the chosen GAN loss (module docstring)."""
    if loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """G's loss (batch mean): softplus(-l) (non-saturating) or -l (hinge)."""
    if loss == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


@dataclass
class MSGANConfig(StageTwoConfig):
    """MS-GAN options. base_channels / adain_hidden: the AdaIN generator (as MS-VAE's decoder);
    discriminator_channels: D's first width b; discriminator_norm: spectral | none; loss: nonsaturating | hinge;
    discriminator_learning_rate: D's Adam step (the generator's is the stage's learning_rate);
    discriminator_steps: D updates per generator update."""

    base_channels: int = 32
    adain_hidden: int = 64
    discriminator_channels: int = 32
    discriminator_norm: Literal[DISCRIMINATOR_NORMS] = "spectral"
    loss: Literal[GAN_LOSSES] = "nonsaturating"
    discriminator_learning_rate: float = 2e-4
    discriminator_steps: int = 1

    def validate(self) -> None:
        super().validate()
        check_positive(self, "base_channels", "discriminator_channels", "discriminator_steps")
        check_non_negative(self, "adain_hidden")
        if self.loss not in GAN_LOSSES:
            raise ConfigError("loss", f"unknown GAN loss {self.loss!r}; allowed: {', '.join(GAN_LOSSES)}")
        if self.discriminator_norm not in DISCRIMINATOR_NORMS:
            raise ConfigError(
                "discriminator_norm", f"unknown {self.discriminator_norm!r}; allowed: {', '.join(DISCRIMINATOR_NORMS)}"
            )
        if not 0 < self.discriminator_learning_rate <= 1:
            raise ConfigError(
                "discriminator_learning_rate", f"must be in (0, 1], got {self.discriminator_learning_rate}"
            )


class MSGAN(StageTwoModel):
    """Conditional GAN p(x | y, z) of MS-VAE appendix E with an AdaIN generator; conditioning "y"."""

    conditioning: ClassVar[str] = "y"
    logged_terms: ClassVar[tuple[str, ...]] = ("discriminator_loss", "discriminator_accuracy")

    def __init__(self, config: MSGANConfig | None = None) -> None:
        super().__init__()
        self.config = config or MSGANConfig()
        c = self.config
        self.generator = AdaINDecoder(c.image_channels, c.residual_dim, c.base_channels, c.adain_hidden)
        self.discriminator = PairDiscriminator(
            c.image_channels, c.image_size, c.discriminator_channels, c.discriminator_norm
        )
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=c.discriminator_learning_rate, betas=(0.5, 0.999)
        )

    def optimised_parameters(self) -> Iterator[nn.Parameter]:
        return self.generator.parameters()

    def auxiliary_state(self) -> dict[str, object]:
        return {"discriminator_optimizer": self.discriminator_optimizer}

    def generate(self, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """G(y, z) = sigmoid(logit(y) + residual), (N, C, H, W) in [0, 1]; differentiable (the objective uses it)."""
        return torch.sigmoid(self.generator(as_unit_float(cond), z))

    def update_discriminator(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One Adam step of D on real pairs [x, y] and generated pairs [fake, y] (detached); returns D's loss, the
        mean D(real), D(fake) probabilities and its accuracy (threshold 0) before the step."""
        real_logits = self.discriminator(x, y)
        fake_logits = self.discriminator(fake.detach(), y)
        loss = discriminator_loss(real_logits, fake_logits, self.config.loss)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return discriminator_terms(loss, real_logits, fake_logits)

    def objective(
        self, x: torch.Tensor, cond: torch.Tensor, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(generator loss, logs). In training mode with gradients on, D is updated first (module docstring).
        logs: loss (= generator_loss), generator_loss, discriminator_loss, discriminator_real,
        discriminator_fake (mean probabilities), discriminator_accuracy."""
        x, y = as_unit_float(x), as_unit_float(cond)
        fake = self.generate(y, self.sample_residual(len(x)))
        if self.training and torch.is_grad_enabled():
            for _ in range(self.config.discriminator_steps):
                terms = self.update_discriminator(x, y, fake)
        else:
            with torch.no_grad():
                real_logits, fake_logits = self.discriminator(x, y), self.discriminator(fake, y)
                terms = discriminator_terms(
                    discriminator_loss(real_logits, fake_logits, self.config.loss), real_logits, fake_logits
                )
        with frozen(self.discriminator):
            loss = generator_loss(self.discriminator(fake, y), self.config.loss)
        logs = {"loss": loss.detach(), "generator_loss": loss.detach()} | terms
        return loss, {name: float(value) for name, value in logs.items()}


def discriminator_terms(
    loss: torch.Tensor, real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    real_logits, fake_logits = real_logits.detach(), fake_logits.detach()
    accuracy = torch.cat([(real_logits > 0).float(), (fake_logits < 0).float()]).mean()
    return {
        "discriminator_loss": loss.detach(),
        "discriminator_real": torch.sigmoid(real_logits).mean(),
        "discriminator_fake": torch.sigmoid(fake_logits).mean(),
        "discriminator_accuracy": accuracy,
    }
