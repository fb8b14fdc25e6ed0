"""MS-VAE stage two: Srivastava et al., "Improving the Reconstruction of Disentangled Representation Learners via
Multi-Stage Modelling" (MS-VAE).

Given pairs (x, y), y = E[p(y|c)] the stage-one reconstruction, stage two learns the sub-graph (Y, Z) -> X of
MS-VAE eq. 2 by maximising its term (b): loss = recon + beta kl, with a Bernoulli observation model and the
analytic Gaussian KL (beta = 1 is the paper's bound). The ``residual_encoder`` R(x, y) gives q(z|x, y) from the
residual x - y (``residual_encoder_sees_y`` adds y as channels); the ``adain_decoder`` G(y, z) is a small
convolutional encoder-decoder over y alone with additive skips, z entering only through AdaIN after every
convolution, and a zero-initialised head so that the output starts at y. The layer table and the design
choices: docs/stage-two.md, "MS-VAE networks".

Options that decide whether z carries the detail stage one drops (measured in docs/studies/stage-two-detail.md):

* ``kl_warmup_steps``: beta rises linearly from 0 over these steps (the KL warm-up of Bowman et al. 2016, sec. 3.1,
  and Sønderby et al. 2016, sec. 2.3), so the decoder learns to use z before the KL pulls q(z|x, y) to the prior;
* ``free_bits``: the KL term is sum_j max(lambda, KL_j), KL_j the batch mean of unit j's KL (Kingma et al. 2016,
  "free bits", appendix C.8): a unit's first lambda nats are free;
* ``modulation``: ``adain`` (MS-VAE sec. 3.2's modified AdaIN) or ``film`` (FiLM, gamma(z) h + beta(z), without
  the instance normalisation);
* ``zero_init``: the AdaIN modulation networks' last layers and the residual head start at zero (output = y,
  z ignored at step 0) or at PyTorch's default initialisation;
* ``likelihood``: ``bernoulli`` (the logits' binary cross-entropy), or ``gaussian_learned``: N(x | sigmoid(logits),
  sigma^2) with one learned variance (the noise-modelling paper, sec. 7.1; ``multistage.nn.likelihoods``). As
  sigma^2 falls, the reconstruction term grows against the KL, which a fixed Bernoulli cannot do;
* ``posterior_logvar_init``: the initial bias of log sigma^2 in q(z|x, y) (0: PyTorch's default). At 0 every
  sample of z starts as N(mu, ~1) with mu nearly the same for every image (below), so z starts as noise; a
  negative value (-6: sigma ~ 0.05) starts q as nearly deterministic, an autoencoder's code that the KL then
  shapes (measured in docs/studies/stage-two-detail.md: it did not bring the colour in);
* ``encoder_init``: ``default`` (PyTorch's layer initialisation, whose weight variance 1 / (3 fan_in) shrinks the
  signal at every layer: mu varies by about 1e-4 across images at step 0) or ``kaiming`` (He et al. 2015's
  2 / fan_in for the ReLU layers, 1 / fan_in for the last, biases zero), so that mu varies with x from the start;
* ``texture_waves``: K > 0 adds ``FourierTexture``, a full-resolution texture path: K fixed plane waves (the
  Fourier features of Tancik et al. 2020) mixed by weights that are a function of z alone, gated per output channel
  by a map of the decoder's last features. The convolutions over y can only reshape y's smooth blob; a stripe
  pattern of a given angle, frequency and phase is a sum of plane waves;
* ``samples_per_x``: L samples of z per image in the reconstruction term, averaged (the SGVB estimator of Kingma &
  Welling 2014, sec. 2.3, eq. 7, with L > 1): a lower-variance gradient for the encoder at L decoder passes per
  image. The KL is analytic, so it is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from multistage.models.stage_one.betatcvae import as_unit_float, gaussian_kl_per_unit
from multistage.models.stage_two.base import (
    ConfigError,
    StageTwoConfig,
    StageTwoModel,
    check_non_negative,
    check_positive,
)
from multistage.nn.adain import AdaIN
from multistage.nn.conv import ConvEncoder
from multistage.nn.likelihoods import build_likelihood

Y_CLAMP = 1e-4
MODULATIONS = ("adain", "film")
STAGE_TWO_LIKELIHOODS = ("bernoulli", "gaussian_learned")
ENCODER_INITS = ("default", "kaiming")


@dataclass
class MSVAEConfig(StageTwoConfig):
    """MS-VAE stage-two hyper-parameters. residual_dim: size of z; beta: weight of KL[q(z|x,y)||p(z)] (eq. 2
    term b has beta = 1); base_channels: width b of the AdaIN decoder; adain_hidden: hidden units of each
    AdaIN's gamma/beta network; residual_encoder_sees_y: also feed y to the residual encoder (default: x - y only);
    kl_warmup_steps, free_bits, modulation, zero_init, likelihood, texture_waves, posterior_logvar_init,
    encoder_init, samples_per_x: see the module docstring."""

    beta: float = 1.0
    base_channels: int = 32
    adain_hidden: int = 64
    residual_encoder_sees_y: bool = False
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    modulation: str = "adain"
    zero_init: bool = True
    likelihood: str = "bernoulli"
    texture_waves: int = 0
    posterior_logvar_init: float = 0.0
    encoder_init: str = "default"
    samples_per_x: int = 1

    def validate(self) -> None:
        super().validate()
        check_positive(self, "base_channels", "samples_per_x")
        check_non_negative(self, "beta", "adain_hidden", "kl_warmup_steps", "free_bits", "texture_waves")
        choices = (("modulation", MODULATIONS), ("likelihood", STAGE_TWO_LIKELIHOODS), ("encoder_init", ENCODER_INITS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


class FourierTexture(nn.Module):
    """A texture at full resolution for the AdaIN decoder: g(h) * sum_k a_k(z) phi_k / sqrt(2K).

    phi_k are 2K fixed maps cos(2 pi f_k <d_k, p>) and sin(.) over the pixel grid p (plane waves, the Fourier
    features of Tancik et al. 2020): K directions d_k uniform on the half circle and K frequencies f_k log-uniform
    from one cycle per image to the Nyquist limit (0.5 cycles per pixel), drawn once from a fixed seed. The weights
    a(z) are a small network of z alone, so, as in AdaIN, z scales fixed features and enters nowhere else; any
    plane wave's angle and phase in a small window is then a weighted sum of the nearby phi_k. g(h) is a
    transposed convolution of the decoder's last (AdaIN-modulated) features to one gain map per image channel,
    zero at initialisation (the texture starts at zero), which places the texture where the object is."""

    def __init__(
        self, features: int, image_channels: int, size: int, residual_dim: int, waves: int, hidden: int
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        angles = torch.rand(waves, generator=generator, dtype=torch.float64) * math.pi
        lowest, highest = math.log(1.0 / size), math.log(0.5)
        frequencies = torch.exp(
            lowest + (highest - lowest) * torch.rand(waves, generator=generator, dtype=torch.float64)
        )
        rows, columns = torch.meshgrid(
            torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
        )
        phase = (
            2
            * math.pi
            * frequencies[:, None, None]
            * (columns * torch.cos(angles)[:, None, None] + rows * torch.sin(angles)[:, None, None])
        )
        self.register_buffer("waves", torch.cat([torch.cos(phase), torch.sin(phase)]).float(), persistent=False)
        self.weights = nn.Sequential(
            nn.Linear(residual_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * waves)
        )
        self.gain = nn.ConvTranspose2d(features, image_channels, kernel_size=4, stride=2, padding=1)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        pattern = torch.einsum("bk,khw->bhw", self.weights(z), self.waves) / math.sqrt(len(self.waves))
        return self.gain(h) * pattern[:, None]


class AdaINDecoder(nn.Module):
    """G(y, z): encoder-decoder over y, every convolution followed by AdaIN(h, z); output logits = logit(y) + a
    zero-initialised residual head (see the module docstring for the layout)."""

    def __init__(
        self,
        image_channels: int,
        residual_dim: int,
        base_channels: int = 32,
        adain_hidden: int = 64,
        modulation: str = "adain",
        zero_init: bool = True,
        texture_waves: int = 0,
        image_size: int = 32,
    ):
        super().__init__()
        b, c = base_channels, image_channels

        def down(i: int, o: int) -> nn.Conv2d:
            return nn.Conv2d(i, o, kernel_size=4, stride=2, padding=1)

        def up(i: int, o: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(i, o, kernel_size=4, stride=2, padding=1)

        self.down_convolutions = nn.ModuleList([down(c, b), down(b, b), down(b, 2 * b)])
        self.up_convolutions = nn.ModuleList([up(2 * b, b), up(b, b)])
        widths = [b, b, 2 * b, b, b]
        normalise = modulation == "adain"
        self.adains = nn.ModuleList(
            [AdaIN(w, residual_dim, hidden=adain_hidden, normalise=normalise, zero_init=zero_init) for w in widths]
        )
        self.residual_head = up(b, c)
        if zero_init:
            nn.init.zeros_(self.residual_head.weight)
            nn.init.zeros_(self.residual_head.bias)
        hidden = adain_hidden or 64
        self.texture = FourierTexture(b, c, image_size, residual_dim, texture_waves, hidden) if texture_waves else None

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = as_unit_float(y)
        adains = iter(self.adains)
        h = y
        skips = []
        for convolution in self.down_convolutions:
            h = F.relu(next(adains)(convolution(h), z))
            skips.append(h)
        for convolution, skip in zip(self.up_convolutions, reversed(skips[:-1])):
            h = F.relu(next(adains)(convolution(h) + skip, z))
        logits = torch.logit(y.clamp(Y_CLAMP, 1.0 - Y_CLAMP)) + self.residual_head(h)
        if self.texture is not None:
            logits = logits + self.texture(h, z)
        return logits


class MSVAE(StageTwoModel):
    """Conditional VAE p(x|y, z) q(z|x, y) of MS-VAE sec. 3.2, trained on eq. 2 term (b); conditioning "y"."""

    conditioning: ClassVar[str] = "y"

    def __init__(self, config: MSVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or MSVAEConfig()
        c = self.config
        encoder_channels = c.image_channels * (2 if c.residual_encoder_sees_y else 1)
        self.encoder = ConvEncoder(encoder_channels, c.image_size, 2 * c.residual_dim)
        if c.encoder_init == "kaiming":  # He et al. 2015, sec. 2.2: variance 2 / fan_in keeps ReLU signals' scale
            layers = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            for layer in layers:
                gain = "linear" if layer is layers[-1] else "relu"
                nn.init.kaiming_normal_(layer.weight, nonlinearity=gain)
                nn.init.zeros_(layer.bias)
        if c.posterior_logvar_init:
            with torch.no_grad():  # the log-variance half of the last layer's bias (mu | logvar, residual_encoder)
                self.encoder.fully_connected[-1].bias[c.residual_dim :] = c.posterior_logvar_init
        self.adain_decoder = AdaINDecoder(
            c.image_channels,
            c.residual_dim,
            c.base_channels,
            c.adain_hidden,
            c.modulation,
            c.zero_init,
            c.texture_waves,
            c.image_size,
        )
        shape = (c.image_channels, c.image_size, c.image_size)
        self.likelihood = build_likelihood(c.likelihood, shape) if c.likelihood != "bernoulli" else None

    def residual_encoder(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x, y), each (B, residual_dim), from the residual x - y (and y if configured)."""
        x, y = as_unit_float(x), as_unit_float(y)
        inputs = x - y
        if self.config.residual_encoder_sees_y:
            inputs = torch.cat([inputs, y], dim=1)
        mu, logvar = self.encoder(inputs).chunk(2, dim=1)
        return mu, logvar

    def decode(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|y, z), (B, C, H, W) (the Gaussian likelihood's mean is their sigmoid); equal to logit(y)
        at initialisation with ``zero_init``."""
        return self.adain_decoder(y, z)

    @torch.no_grad()
    def generate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The mean sigmoid(G(y, z)) of p(x|y, z); z from the prior N(0, I) for samples, from q(z|x,y) for
        reconstructions."""
        return torch.sigmoid(self.decode(y, z))

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The posterior mean of q(z|x, y), (B, residual_dim)."""
        return self.residual_encoder(x, y)[0]

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def objective(
        self, x: torch.Tensor, y: torch.Tensor, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logs), loss = recon + beta_t * KL term (MS-VAE eq. 2 term b, negated; beta_t = beta, or its
        warm-up at ``step``; the KL term with free bits when set). x: images (uint8 or float in [0, 1]); y:
        stage-one probabilities (any float dtype). logs: loss, recon, kl (the true KL), kl_unit.<j>, and
        decoder_variance for the Gaussian likelihood."""
        c = self.config
        x, y = as_unit_float(x), as_unit_float(y)
        mu, logvar = self.residual_encoder(x, y)
        k = c.samples_per_x  # the L samples of eq. 7 stacked along the batch: the mean over L x B images
        z = self.reparameterize(mu.repeat(k, 1), logvar.repeat(k, 1))
        logits = self.decode(y.repeat(k, 1, 1, 1), z)
        target = x.repeat(k, 1, 1, 1)
        if self.likelihood is None:
            recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / target.shape[0]
        else:
            recon = self.likelihood.negative_log_likelihood(torch.sigmoid(logits), target)
        kl_per_unit = gaussian_kl_per_unit(mu, logvar).mean(dim=0)
        kl = kl_per_unit.sum()
        kl_term = kl_per_unit.clamp(min=c.free_bits).sum() if c.free_bits > 0 else kl
        beta = c.beta
        if c.kl_warmup_steps > 0 and step is not None:
            beta = c.beta * min(1.0, step / c.kl_warmup_steps)
        loss = recon + beta * kl_term
        names = ["loss", "recon", "kl"] + [f"kl_unit.{j}" for j in range(c.residual_dim)]
        values = torch.cat([torch.stack([loss, recon, kl]).detach(), kl_per_unit.detach()]).tolist()
        logs = dict(zip(names, values))
        if self.likelihood is not None:
            logs |= {key: float(value) for key, value in self.likelihood.logs().items()}
        return loss, logs
