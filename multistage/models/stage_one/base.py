"""The interface every stage-one model implements, the options every one shares, and the Gaussian VAE the zoo is
built on.

A stage-one model learns codes C from data X and a decoder whose mean E[p(x|c)] is the blurry reconstruction Y
that stage two starts from (MS-VAE sec. 3.2). The pipeline talks to it only through `StageOneModel`:
``objective(x, step) -> (loss, logs)`` (every schedule is a function of ``step`` inside the model, so one training
loop serves every model), ``encode``, ``representation`` (the code the metrics score), ``sample_code``,
``decode_mean`` (Y), ``code_dim`` and ``code_names``. Sampling is split into ``posterior(x)`` and
``code_from_uniforms(posterior, u)`` so that callers can fix the noise themselves. State outside the parameters
that must survive a resume comes from ``auxiliary_state()``; the optimiser is built over
``optimised_parameters()``. The contract in full: docs/stage-one.md, "The stage-one interface".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from multistage.data.base import to_float
from multistage.nn.likelihoods import LIKELIHOODS, build_likelihood
from multistage.nn.networks import ARCHITECTURES, build_decoder, build_encoder, resolve_architecture
from multistage.train import linear_warmup

UNIFORM_EPSILON = 1e-7  # uniforms are clamped to (eps, 1 - eps) before an inverse CDF
LOG_2PI = math.log(2.0 * math.pi)


class ConfigError(ValueError):
    """A model option has a bad value; ``field`` names it (the stage turns it into ``stage_one.<...>.<field>``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def as_unit_float(x) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; floats (and float series) pass through (``multistage.data.base.to_float``)."""
    return to_float(x)


def gaussian_from_uniforms(mu: torch.Tensor, logvar: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """mu + sigma * Phi^-1(u): a reparameterised Gaussian sample from uniforms u in (0, 1) (inverse CDF)."""
    u = uniforms.to(mu.dtype).clamp(UNIFORM_EPSILON, 1.0 - UNIFORM_EPSILON)
    return mu + torch.exp(0.5 * logvar) * torch.special.ndtri(u)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting), -1/2 (log 2 pi + logvar + (z - mu)^2 / exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def gaussian_kl_per_unit(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, exp(logvar)) || N(0, 1)) per element: 1/2 (mu^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)


def linear_schedule(step: int | None, start: float, stop: float, steps: int) -> float:
    """``start`` moving linearly to ``stop`` over ``steps`` steps, ``stop`` from then on, and when ``step`` is
    None (schedule finished) or ``steps`` is 0. Step 0 is already 1/steps of the way
    (``multistage.train.linear_warmup`` is the fraction)."""
    if step is None:
        return float(stop)
    return float(start + (stop - start) * linear_warmup(step, steps))


# --------------------------------------------------------------------------------------------------------------
# options every stage-one model shares
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StageOneConfig:
    """Options shared by the whole zoo. The data fixes ``image_channels``, ``image_size`` and ``series_length``
    (0 for images (C, S, S); T > 0 for float series (C, T), where ``image_size`` is unused); the rest are choices:
    ``latent_dim`` (continuous units), ``architecture`` (``multistage.nn.networks``: auto, conv64, conv32,
    pooled64, mlp, series_mlp), ``likelihood`` (``multistage.nn.likelihoods``: bernoulli, gaussian, gaussian_learned,
    gaussian_learned_per_pixel) and ``gaussian_variance`` (the fixed variance, or the starting value of a learned
    one; Gaussian likelihoods only; None = 0.05). Subclasses add their own options and extend ``validate``."""

    image_channels: int = 1
    image_size: int = 64
    series_length: int = 0
    latent_dim: int = 10
    architecture: Literal[ARCHITECTURES] = "auto"
    likelihood: Literal[LIKELIHOODS] = "bernoulli"
    gaussian_variance: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.series_length:
            return (int(self.image_channels), int(self.series_length))
        return (int(self.image_channels), int(self.image_size), int(self.image_size))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        for name in ("image_channels", "latent_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.series_length < 0:
            raise ConfigError("series_length", f"must be >= 0, got {self.series_length}")
        if not self.series_length and self.image_size < 1:
            raise ConfigError("image_size", f"must be >= 1, got {self.image_size}")
        try:
            resolve_architecture(self.architecture, self.input_shape)
        except ValueError as error:
            raise ConfigError("architecture", str(error)) from None
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                "likelihood", f"unknown likelihood {self.likelihood!r}; allowed: {', '.join(LIKELIHOODS)}"
            )
        if self.gaussian_variance is not None:
            if self.likelihood == "bernoulli":
                raise ConfigError(
                    "gaussian_variance",
                    "is used by the Gaussian likelihoods only, and the "
                    "likelihood is 'bernoulli'; remove it or choose a Gaussian likelihood",
                )
            if not self.gaussian_variance > 0:
                raise ConfigError("gaussian_variance", f"must be > 0, got {self.gaussian_variance}")


def check_at_least(config: object, minimum: float, *names: str) -> None:
    """ConfigError unless every option in ``names`` is >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not value >= minimum:
            raise ConfigError(name, f"must be >= {minimum:g}, got {value}")


# --------------------------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------------------------


class StageOneModel(nn.Module):
    """Base class of the stage-one zoo (see the module docstring for the contract)."""

    config: StageOneConfig
    # the model's own loss terms (beside loss and recon) worth a progress bar entry and a curve
    logged_terms: tuple[str, ...] = ("kl",)

    @property
    def code_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def code_dim(self) -> int:
        return len(self.code_names)

    @property
    def noise_width(self) -> int:
        """Uniform variates per row that ``code_from_uniforms`` needs."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def code_from_uniforms(
        self, posterior: dict[str, torch.Tensor], uniforms: torch.Tensor, relaxed: bool = False
    ) -> torch.Tensor:
        """A code c ~ q(c|x) from uniforms (N, noise_width); ``relaxed`` gives the differentiable training sample
        (differs from the exact sample only for discrete codes: Gumbel-softmax instead of Gumbel-max)."""
        raise NotImplementedError

    def representation_from_posterior(self, posterior: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_mean(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code (N, code_dim) the metrics score."""
        return self.representation_from_posterior(self.posterior(x))

    def sample_code(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """c ~ q(c|x), (N, code_dim); the noise comes from ``generator`` (torch's default one when None)."""
        posterior = self.posterior(x)
        first = next(iter(posterior.values()))
        uniforms = torch.rand(
            first.shape[0],
            self.noise_width,
            generator=generator,
            device=generator.device if generator is not None else first.device,
        )
        return self.code_from_uniforms(posterior, uniforms.to(first.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, use_mean: bool = True) -> torch.Tensor:
        """Y = E[p(x|c)] with c the representation (or a sample c ~ q(c|x) when ``use_mean`` is False)."""
        return self.decode_mean(self.representation(x) if use_mean else self.sample_code(x))

    def optimised_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the training loop's optimiser updates (all of them unless a model says otherwise)."""
        return self.parameters()

    def auxiliary_state(self) -> dict[str, object]:
        """State holders with ``state_dict``/``load_state_dict`` (beside the model's own) a checkpoint must keep."""
        return {}


# --------------------------------------------------------------------------------------------------------------
# the Gaussian VAE every continuous model of the zoo extends
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedBatch:
    """What one training step computed, handed to a model's ``regulariser``: the batch x (float), the Gaussian
    posterior parameters, the reparameterised code z (the decoder's input), the analytic KL(q(z|x) || N(0, I)) per
    Gaussian unit (batch mean) and the whole posterior dict (JointVAE's discrete logits are there)."""

    x: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    kl_per_unit: torch.Tensor
    posterior: dict[str, torch.Tensor]


class GaussianVAE(StageOneModel):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))), p(z) = N(0, I), decoder and likelihood from the config.

    ``objective`` computes, with one reparameterised z ~ q(z|x) per item (Kingma & Welling 2014),

        loss = recon + regulariser,    recon = -E_q(z|x)[log p(x|z)]  (batch mean of the per-item sum)

    where ``regulariser(batch, step) -> (penalty, terms)`` is what each model adds (the plain VAE's is the KL).
    Logs: loss, recon, kl (analytic KL summed over units, batch mean), kl_unit.<j>, the regulariser's terms and
    the likelihood's (decoder_variance for the Gaussians)."""

    def __init__(self, config: StageOneConfig) -> None:
        super().__init__()
        self.config = config
        shape = config.input_shape
        self.encoder = build_encoder(config.architecture, shape, self.encoder_features)
        self.decoder = build_decoder(config.architecture, self.decoder_features, shape)
        self.likelihood = build_likelihood(config.likelihood, shape, config.gaussian_variance)

    # ---------------------------------------------------------------------------------------- sizes and names
    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    @property
    def encoder_features(self) -> int:
        return 2 * self.latent_dim

    @property
    def decoder_features(self) -> int:
        return self.latent_dim

    @property
    def code_names(self) -> list[str]:
        return [f"z{j}" for j in range(self.latent_dim)]

    @property
    def noise_width(self) -> int:
        return self.latent_dim

    # ---------------------------------------------------------------------------------------- networks
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data (B, *input_shape), uint8 or float -> (mu, logvar) of q(z|x), each (B, latent_dim)."""
        features = self.encoder(as_unit_float(x))
        mu, logvar = features[:, : self.latent_dim], features[:, self.latent_dim : 2 * self.latent_dim]
        return mu, logvar

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Codes (B, decoder_features) -> the decoder's raw output (Bernoulli logits or Gaussian mean)."""
        return self.decoder(c)

    def decode_mean(self, c: torch.Tensor) -> torch.Tensor:
        mean = self.likelihood.mean(self.decode(c))
        if self.config.likelihood != "bernoulli" and not self.config.series_length:
            mean = mean.clamp(0.0, 1.0)
        return mean

    def posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        return {"mu": mu, "logvar": logvar}

    def code_from_uniforms(
        self, posterior: dict[str, torch.Tensor], uniforms: torch.Tensor, relaxed: bool = False
    ) -> torch.Tensor:
        return gaussian_from_uniforms(posterior["mu"], posterior["logvar"], uniforms)

    def representation_from_posterior(self, posterior: dict[str, torch.Tensor]) -> torch.Tensor:
        return posterior["mu"]

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling, 2014)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    # ---------------------------------------------------------------------------------------- objective
    def regulariser(self, batch: EncodedBatch, step: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The plain VAE: KL(q(z|x) || p(z)) (analytic). Models override this."""
        return batch.kl_per_unit.sum(), {}

    def objective(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        x = as_unit_float(x)
        posterior = self.posterior(x)
        uniforms = torch.rand(x.shape[0], self.noise_width, device=x.device)
        z = self.code_from_uniforms(posterior, uniforms, relaxed=True)
        recon = self.likelihood.negative_log_likelihood(self.decode(z), x)
        kl_per_unit = gaussian_kl_per_unit(posterior["mu"], posterior["logvar"]).mean(dim=0)
        batch = EncodedBatch(x, posterior["mu"], posterior["logvar"], z, kl_per_unit, posterior)
        penalty, terms = self.regulariser(batch, step)
        loss = recon + penalty
        return loss, collect_logs(
            {"loss": loss, "recon": recon, "kl": kl_per_unit.sum()} | terms | self.likelihood.logs(), kl_per_unit
        )


def collect_logs(
    terms: dict[str, torch.Tensor | float], kl_per_unit: torch.Tensor | None = None, unit_prefix: str = "kl_unit"
) -> dict[str, float]:
    """Flat dict of floats from scalar tensors / floats (one device sync for all of them), plus
    ``<unit_prefix>.<j>`` for each entry of ``kl_per_unit``."""
    names = list(terms)
    values = [
        torch.as_tensor(v, dtype=torch.float32).detach().reshape(()).cpu()
        if not isinstance(v, torch.Tensor)
        else v.detach().float().reshape(())
        for v in terms.values()
    ]
    device = next((v.device for v in values if v.device.type != "cpu"), torch.device("cpu"))
    stacked = torch.stack([v.to(device) for v in values])
    if kl_per_unit is not None:
        stacked = torch.cat([stacked, kl_per_unit.detach().float().to(device)])
        names += [f"{unit_prefix}.{j}" for j in range(kl_per_unit.numel())]
    return dict(zip(names, stacked.tolist()))
