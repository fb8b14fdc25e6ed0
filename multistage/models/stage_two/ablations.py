"""The ablations of MS-VAE appendix L, each a stage-two variant (the paper's model names in brackets).

``c_input`` (`CInputVAE`, MSVAE-C-IN, M3, L.2): the stage-one code C instead of Y as input, Z through AdaIN.
``concat`` (`ConcatVAE`, MSVAE-C, M2, L.2): [C, Z] concatenated at the input of the same decoder, no AdaIN.
``end_to_end`` (`EndToEndVAE`, M1, L.1): C and Z learned together, the beta-TCVAE penalty on C only.
``z_first`` (`ZFirstVAE`, MSVAE-ZC, M5, L.3): a plain VAE learns Z first, then C beside the frozen Z.
What each isolates and how it is trained: docs/stage-two.md, "The ablations".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from multistage.models.stage_one.base import gaussian_kl_per_unit
from multistage.models.stage_two.base import (
    StageTwoConfig,
    StageTwoModel,
    as_unit_float,
    check_non_negative,
    check_positive,
)
from multistage.models.stage_two.baselines import reparameterise
from multistage.models.stage_two.code_penalty import CodeModel, CodePenaltyConfig
from multistage.models.stage_two.msvae import AdaINDecoder
from multistage.nn.adain import AdaIN
from multistage.nn.conv import ENCODER_CHANNELS, HIDDEN_FEATURES, ConvDecoder, ConvEncoder

INJECTIONS = ("adain", "concat")


def bernoulli_recon(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(x | sigmoid(logits)) summed over pixels, batch mean."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


# ------------------------------------------------------------------------------------------------ c_input, concat
class CodeDecoder(nn.Module):
    """G(c, z) -> logits: the disentanglement_lib decoder (``multistage.nn.conv.ConvDecoder``'s layers) over the code
    c, with z injected either through AdaIN after every hidden transposed convolution (``injection="adain"``; the
    fully connected layers never see z) or concatenated to c at the input, with affine instance normalisation in
    the same places (``"concat"``)."""

    def __init__(
        self,
        code_dim: int,
        residual_dim: int,
        image_channels: int,
        image_size: int,
        injection: str = "adain",
        adain_hidden: int = 64,
    ) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
        self.injection = injection
        self.spatial = image_size // 2 ** len(ENCODER_CHANNELS)
        self.first_channels = ENCODER_CHANNELS[-1]
        inputs = code_dim + (residual_dim if injection == "concat" else 0)
        self.fully_connected = nn.Sequential(
            nn.Linear(inputs, HIDDEN_FEATURES),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN_FEATURES, self.first_channels * self.spatial**2),
            nn.ReLU(inplace=True),
        )
        widths = (*reversed(ENCODER_CHANNELS[:-1]), image_channels)  # 64 -> 64 -> 32 -> 32 -> C
        previous = self.first_channels
        self.transposed_convolutions = nn.ModuleList()
        self.normalisations = nn.ModuleList()
        for index, width in enumerate(widths):
            self.transposed_convolutions.append(nn.ConvTranspose2d(previous, width, 4, stride=2, padding=1))
            if index < len(widths) - 1:
                self.normalisations.append(
                    AdaIN(width, residual_dim, hidden=adain_hidden)
                    if injection == "adain"
                    else nn.InstanceNorm2d(width, affine=True)
                )
            previous = width

    def forward(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([c, z], dim=1) if self.injection == "concat" else c
        h = self.fully_connected(inputs).reshape(-1, self.first_channels, self.spatial, self.spatial)
        for convolution, normalisation in zip(self.transposed_convolutions, self.normalisations):
            h = convolution(h)
            h = normalisation(h, z) if self.injection == "adain" else normalisation(h)
            h = F.relu(h)
        return self.transposed_convolutions[-1](h)


@dataclass
class CodeConditionedConfig(StageTwoConfig):
    """code_dim: |C| (set from the stage-one model by the stage); beta: weight of KL(q(z|x,c) || p(z));
    adain_hidden: hidden units of each AdaIN's gamma/beta network (c_input only). How z enters is the variant
    (the model class's ``injection``), not an option."""

    code_dim: int = 10
    beta: float = 1.0
    adain_hidden: int = 64

    def validate(self) -> None:
        super().validate()
        check_positive(self, "code_dim")
        check_non_negative(self, "beta", "adain_hidden")


class CodeConditionedVAE(StageTwoModel):
    """Conditional VAE p(x|c, z) q(z|x, c) of appendix L.2; ``injection`` (adain | concat) is set by the subclass."""

    conditioning: ClassVar[str] = "c"
    stage_one_options: ClassVar[tuple[str, ...]] = ("code_dim",)
    injection: ClassVar[str] = "adain"

    def __init__(self, config: CodeConditionedConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CodeConditionedConfig()
        self.image_encoder = ConvEncoder(c.image_channels, c.image_size, HIDDEN_FEATURES)
        self.residual_head = nn.Linear(HIDDEN_FEATURES + c.code_dim, 2 * c.residual_dim)
        self.decoder = CodeDecoder(
            c.code_dim, c.residual_dim, c.image_channels, c.image_size, self.injection, c.adain_hidden
        )

    def residual_encoder(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x, c)."""
        features = F.relu(self.image_encoder(as_unit_float(x)))
        return self.residual_head(torch.cat([features, c.to(features.dtype)], dim=1)).chunk(2, dim=1)

    def objective(self, x: torch.Tensor, c: torch.Tensor, step: int | None = None):
        x = as_unit_float(x)
        c = c.float()
        mu, logvar = self.residual_encoder(x, c)
        recon = bernoulli_recon(self.decoder(c, reparameterise(mu, logvar)), x)
        kl = gaussian_kl_per_unit(mu, logvar).mean(dim=0).sum()
        loss = recon + self.config.beta * kl
        return loss, {"loss": float(loss.detach()), "recon": float(recon.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.residual_encoder(x, c.float())[0]

    @torch.no_grad()
    def generate(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(c.float(), z))


class CInputVAE(CodeConditionedVAE):
    """``c_input``: C instead of Y, Z through AdaIN (MSVAE-C-IN, M3)."""


class ConcatVAE(CodeConditionedVAE):
    """``concat``: [C, Z] concatenated at the decoder's input (MSVAE-C, M2)."""

    injection: ClassVar[str] = "concat"


# ------------------------------------------------------------------------------------------------ end_to_end
@dataclass
class EndToEndConfig(CodePenaltyConfig):
    """The beta-TCVAE penalty options on C (``CodePenaltyConfig``), plus the AdaIN decoder's width base_channels
    and adain_hidden (as MS-VAE's)."""

    base_channels: int = 32
    adain_hidden: int = 64

    def validate(self) -> None:
        super().validate()
        check_positive(self, "base_channels")
        check_non_negative(self, "adain_hidden")


class EndToEndVAE(CodeModel):
    """Appendix L.1 (M1): q(c, z|x); Y = sigmoid(D(c)) unobserved; X ~ Bernoulli(sigmoid(G(Y, z)))."""

    logged_terms: ClassVar[tuple[str, ...]] = ("recon", "tc", "kl_z")

    def __init__(self, config: EndToEndConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or EndToEndConfig()
        self.encoder = ConvEncoder(c.image_channels, c.image_size, 2 * self.latent_dim)
        self.code_decoder = ConvDecoder(c.code_dim, c.image_channels, c.image_size)
        self.adain_decoder = AdaINDecoder(c.image_channels, c.residual_dim, c.base_channels, c.adain_hidden)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(as_unit_float(x)).chunk(2, dim=1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        c, z = latent[:, : self.code_dim], latent[:, self.code_dim :]
        return self.adain_decoder(torch.sigmoid(self.code_decoder(c)), z)

    def objective(self, x: torch.Tensor, cond: None = None, step: int | None = None):
        x = as_unit_float(x)
        mu, logvar = self.encode(x)
        latent = reparameterise(mu, logvar)
        recon = bernoulli_recon(self.decode(latent), x)
        k = self.code_dim
        penalty, terms = self.code_penalty(latent[:, :k], mu[:, :k], logvar[:, :k], step)
        kl_z = gaussian_kl_per_unit(mu[:, k:], logvar[:, k:]).mean(dim=0).sum()
        loss = recon + penalty + kl_z
        logs = {
            "loss": loss,
            "recon": recon,
            "kl": terms["index_code_mi"] + terms["tc"] + terms["dim_kl"] + kl_z,
            "kl_z": kl_z,
            **terms,
        }
        return loss, {name: float(torch.as_tensor(value).detach()) for name, value in logs.items()}

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, cond: None = None) -> torch.Tensor:
        return self.encode(x)[0]

    @torch.no_grad()
    def generate(self, cond: None, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(latent))


# ------------------------------------------------------------------------------------------------ z_first
@dataclass
class ZFirstConfig(CodePenaltyConfig):
    """z_steps: training steps of the first phase (the Z-VAE); the C phase follows until the run ends."""

    z_steps: int = 1250

    def validate(self) -> None:
        super().validate()
        check_non_negative(self, "z_steps")


class ZFirstVAE(CodeModel):
    """Appendix L.3 (M5): Z by a plain VAE first, then C with the beta-TCVAE penalty, X from [c, z]."""

    logged_terms: ClassVar[tuple[str, ...]] = ("recon", "kl", "phase")

    def __init__(self, config: ZFirstConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ZFirstConfig()
        self.residual_encoder = ConvEncoder(c.image_channels, c.image_size, 2 * c.residual_dim)
        self.residual_decoder = ConvDecoder(c.residual_dim, c.image_channels, c.image_size)
        self.code_encoder = ConvEncoder(c.image_channels, c.image_size, 2 * c.code_dim)
        self.decoder = ConvDecoder(self.latent_dim, c.image_channels, c.image_size)

    def in_residual_phase(self, step: int | None) -> bool:
        return step is not None and step < self.config.z_steps

    def objective(self, x: torch.Tensor, cond: None = None, step: int | None = None):
        x = as_unit_float(x)
        if self.in_residual_phase(step):
            mu, logvar = self.residual_encoder(x).chunk(2, dim=1)
            recon = bernoulli_recon(self.residual_decoder(reparameterise(mu, logvar)), x)
            kl = gaussian_kl_per_unit(mu, logvar).mean(dim=0).sum()
            loss, phase = recon + kl, 1.0
        else:
            with torch.no_grad():
                z = self.residual_encoder(x)[:, : self.residual_dim]
            mu, logvar = self.code_encoder(x).chunk(2, dim=1)
            c = reparameterise(mu, logvar)
            recon = bernoulli_recon(self.decoder(torch.cat([c, z], dim=1)), x)
            penalty, terms = self.code_penalty(c, mu, logvar, step, start_step=self.config.z_steps)
            kl = terms["index_code_mi"] + terms["tc"] + terms["dim_kl"]
            loss, phase = recon + penalty, 2.0
        return loss, {
            "loss": float(loss.detach()),
            "recon": float(recon.detach()),
            "kl": float(kl.detach()),
            "phase": phase,
        }

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, cond: None = None) -> torch.Tensor:
        x = as_unit_float(x)
        c = self.code_encoder(x)[:, : self.code_dim]
        z = self.residual_encoder(x)[:, : self.residual_dim]
        return torch.cat([c, z], dim=1)

    @torch.no_grad()
    def generate(self, cond: None, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(latent))
