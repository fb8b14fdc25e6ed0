"""The baselines of MS-VAE section 4 and appendix H, as stage-two variants that learn from x alone.

* beta-TCVAE with |C| latents is stage one itself (the evaluate stage scores it from Y and the stage-one code).
* ``betatcvae_l`` (:class:`BetaTCVAEL`): "beta-TCVAE-L with latent dimension size |C + Z|" (sec. 4): the stage-one
  beta-TCVAE (``multistage.models.stage_one.betatcvae``, the same options, copied from the stage-one model by the
  stage) with ``code_dim + residual_dim`` latents; its code for MIG is the whole latent, as in the paper's figure 4.
* ``bigvae`` (:class:`BigVAE`): "a vanilla VAE model of the same capacity as MS-VAE (Big-VAE)" (sec. 4.1): a plain
  VAE (beta = 1, Bernoulli likelihood) with |C| + |Z| latents whose disentanglement_lib convolutional encoder and
  decoder are widened until its parameter count matches MS-VAE's (stage one + stage two). With
  ``target_parameters`` T > 0 and ``base_channels = 0`` the width is chosen here: the four convolution widths
  (b, b, 2b, 2b) grow with the square root of T over the standard network's count (b = 32 at the standard
  size; convolutions and the fully connected layers then grow alike), and the hidden width h of the fully connected
  layers, on which the count is affine, is solved for exactly; the count ends within one h-step of T
  (about 0.1% at T ~ 1.3M). The resolved (b, h) are written back into the config, so the saved model rebuilds as
  trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from multistage.models.stage_one.base import gaussian_kl_per_unit
from multistage.models.stage_one.betatcvae import BetaTCVAE, BetaTCVAEConfig
from multistage.models.stage_two.base import (
    ConfigError,
    StageTwoConfig,
    StageTwoModel,
    as_unit_float,
    check_non_negative,
)
from multistage.models.stage_two.code_penalty import CodeModel, CodePenaltyConfig
from multistage.nn.conv import ENCODER_CHANNELS, HIDDEN_FEATURES, ConvDecoder, ConvEncoder
from multistage.nn.likelihoods import LIKELIHOODS


def parameter_count(module: torch.nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


# ------------------------------------------------------------------------------------------------ beta-TCVAE-L
@dataclass
class BetaTCVAELConfig(CodePenaltyConfig):
    """beta-TCVAE-L: the stage-one beta-TCVAE with code_dim + residual_dim latents (see the module docstring);
    architecture / likelihood / gaussian_variance as in ``StageOneConfig``."""

    architecture: str = "auto"
    likelihood: Literal[LIKELIHOODS] = "bernoulli"
    gaussian_variance: float | None = None

    def stage_one_config(self) -> BetaTCVAEConfig:
        try:
            return BetaTCVAEConfig(
                image_channels=self.image_channels,
                image_size=self.image_size,
                latent_dim=self.code_dim + self.residual_dim,
                architecture=self.architecture,
                likelihood=self.likelihood,
                gaussian_variance=self.gaussian_variance,
                alpha=self.alpha,
                beta=self.beta,
                gamma=self.gamma,
                estimator=self.estimator,
                warmup_steps=self.warmup_steps,
                dataset_size=self.dataset_size,
            )
        except ConfigError as error:
            raise ConfigError(error.field, error.message) from None

    def validate(self) -> None:
        super().validate()
        self.stage_one_config()


class BetaTCVAEL(CodeModel):
    """beta-TCVAE-L (MS-VAE sec. 4): learns C and Z as one |C|+|Z|-unit beta-TCVAE code; conditioning "none"."""

    stage_one_options: ClassVar[tuple[str, ...]] = CodeModel.stage_one_options + (
        "architecture",
        "likelihood",
        "gaussian_variance",
    )
    logged_terms: ClassVar[tuple[str, ...]] = ("recon", "tc")

    def __init__(self, config: BetaTCVAELConfig | None = None) -> None:
        super().__init__()
        self.config = config or BetaTCVAELConfig()
        self.vae = BetaTCVAE(self.config.stage_one_config())

    @property
    def code_units(self) -> slice:
        return slice(0, self.latent_dim)

    def objective(self, x: torch.Tensor, cond: None = None, step: int | None = None):
        return self.vae.objective(x, step)

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, cond: None = None) -> torch.Tensor:
        return self.vae.representation(x)

    @torch.no_grad()
    def generate(self, cond: None, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_mean(z)


# ------------------------------------------------------------------------------------------------ Big-VAE
@dataclass
class BigVAEConfig(StageTwoConfig):
    """code_dim: |C| (set from stage one by the stage); the VAE has code_dim + residual_dim latents. beta: the KL
    weight (1: the plain VAE). target_parameters: the count to match (the stage sets MS-VAE's); base_channels b
    and hidden_units h: the network's widths (0 = chosen from target_parameters, or the standard 32 / 256)."""

    code_dim: int = 10
    beta: float = 1.0
    target_parameters: int = 0
    base_channels: int = 0
    hidden_units: int = 0

    def validate(self) -> None:
        super().validate()
        if int(self.code_dim) < 1:
            raise ConfigError("code_dim", f"must be >= 1, got {self.code_dim}")
        check_non_negative(self, "beta", "target_parameters", "base_channels", "hidden_units")


def big_vae_widths(base_channels: int) -> tuple[int, ...]:
    b = int(base_channels)
    return (b, b, 2 * b, 2 * b)


def big_vae_parameter_count(
    image_channels: int, image_size: int, latent_dim: int, base_channels: int, hidden_units: int
) -> int:
    """Parameters of :class:`BigVAE`'s encoder + decoder, counted from the layer shapes (a unit test checks it
    against the built network)."""
    b, h, c, L = int(base_channels), int(hidden_units), int(image_channels), int(latent_dim)
    w = big_vae_widths(b)
    flat = w[-1] * (image_size // 16) ** 2
    convolutions = 16 * (c * w[0] + w[0] * w[1] + w[1] * w[2] + w[2] * w[3]) + sum(w)
    encoder = convolutions + (flat * h + h) + (h * 2 * L + 2 * L)
    transposed = 16 * (w[3] * w[2] + w[2] * w[1] + w[1] * w[0] + w[0] * c) + (w[2] + w[1] + w[0] + c)
    decoder = (L * h + h) + (h * flat + flat) + transposed
    return encoder + decoder


def match_parameter_count(image_channels: int, image_size: int, latent_dim: int, target: int) -> tuple[int, int]:
    """(b, h) whose count is the closest to ``target`` from below or above within one h-step (see the module
    docstring): b = round(32 sqrt(target / standard count)), h solved on the affine count."""
    standard = big_vae_parameter_count(image_channels, image_size, latent_dim, ENCODER_CHANNELS[0], HIDDEN_FEATURES)
    b = max(1, round(ENCODER_CHANNELS[0] * math.sqrt(target / standard)))
    at_zero = big_vae_parameter_count(image_channels, image_size, latent_dim, b, 0)
    slope = big_vae_parameter_count(image_channels, image_size, latent_dim, b, 1) - at_zero
    h = max(1, round((target - at_zero) / slope))
    return b, h


class BigVAE(StageTwoModel):
    """Big-VAE (MS-VAE sec. 4.1): a plain VAE as large as MS-VAE, learning from x alone (conditioning "none").
    loss = recon + beta * KL(q(l|x) || N(0, I)) over all code_dim + residual_dim latents l."""

    conditioning: ClassVar[str] = "none"
    stage_one_options: ClassVar[tuple[str, ...]] = ("code_dim",)

    def __init__(self, config: BigVAEConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BigVAEConfig()
        if not c.base_channels or not c.hidden_units:
            if c.target_parameters:
                c.base_channels, c.hidden_units = match_parameter_count(
                    c.image_channels, c.image_size, self.latent_dim, c.target_parameters
                )
            else:
                c.base_channels = c.base_channels or ENCODER_CHANNELS[0]
                c.hidden_units = c.hidden_units or HIDDEN_FEATURES
        widths = big_vae_widths(c.base_channels)
        self.encoder = ConvEncoder(c.image_channels, c.image_size, 2 * self.latent_dim, widths, c.hidden_units)
        self.decoder = ConvDecoder(self.latent_dim, c.image_channels, c.image_size, widths, c.hidden_units)

    @property
    def latent_dim(self) -> int:
        return int(self.config.code_dim) + self.residual_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(as_unit_float(x)).chunk(2, dim=1)

    def objective(self, x: torch.Tensor, cond: None = None, step: int | None = None):
        x = as_unit_float(x)
        mu, logvar = self.encode(x)
        logits = self.decoder(reparameterise(mu, logvar))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = gaussian_kl_per_unit(mu, logvar).mean(dim=0).sum()
        loss = recon + self.config.beta * kl
        return loss, {"loss": float(loss.detach()), "recon": float(recon.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, cond: None = None) -> torch.Tensor:
        return self.encode(x)[0]

    @torch.no_grad()
    def generate(self, cond: None, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer_residual(x)
