"""MS-FLOW: MS-VAE appendix D. Stage one C -> Y is a Gaussian mixture (y = mu_C, "the means") and stage two
(Y, Z) -> X a conditional affine coupling flow (RealNVP) that models x given y exactly; Z is the flow's latent.

Every number is in one data-space convention: 8-bit images, uniform dequantisation v = (k + u) / 256, and
``log_likelihood`` = log p(v | y) - D log 256 nats per image (a lower bound on the discrete log-likelihood). The
flow maps v through a logit, a conditional elementwise affine layer (data-initialised) and K conditional
couplings to z ~ N(0, I). ``GaussianMixtureStageOne`` is the diagonal mixture of appendix D; mixture + flow is
p(v) = sum_k pi_k p_flow(v | y = mu_k), exact. In the pipeline MS-FLOW is a "y" variant on the paired set and
the mixture stays empty. The convention, the flow and the mixture's choices: docs/stage-two.md, "The MS-FLOW model
in detail".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from multistage.models.stage_two.base import ConfigError, StageTwoConfig, StageTwoModel, as_unit_float
from multistage.nn.coupling import (
    ConditionalCouplingFlow,
    ConditionalElementwiseAffine,
    inverse_logit_transform,
    logit_transform,
    standard_normal_log_density,
)

LOG_256 = math.log(256.0)
LOG_2PI = math.log(2.0 * math.pi)


def quantised_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit integers k = round(255 x) of images x (uint8, or float in [0, 1]), as float."""
    if x.dtype == torch.uint8:
        return x.float()
    return torch.round(x.float().clamp(0.0, 1.0) * 255.0)


def dequantise(
    x: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """v = (round(255 x) + u) / 256, u ~ U[0, 1) (or the given ``noise``, same shape as x), float32."""
    levels = quantised_levels(x)
    if noise is None:
        noise = torch.rand(
            levels.shape, generator=generator, device=generator.device if generator is not None else levels.device
        ).to(levels.device)
    return (levels + noise.to(levels.dtype)) / 256.0


# --------------------------------------------------------------------------------------------------------------
# stage one: the Gaussian mixture C -> Y
# --------------------------------------------------------------------------------------------------------------


class GaussianMixtureStageOne(nn.Module):
    """A diagonal Gaussian mixture over flattened dequantised pixels v (D), kept as float64 buffers so a model file
    restores it: log_weights (K,), means (K, D), variances (K, D). ``fit`` runs scikit-learn's GaussianMixture."""

    def __init__(self, components: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.full((components,), -math.log(components), dtype=torch.float64))
        self.register_buffer("means", torch.zeros(components, dim, dtype=torch.float64))
        self.register_buffer("variances", torch.ones(components, dim, dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def fit(self, v: np.ndarray, reg_covar: float = 3e-5, seed: int = 0, max_iter: int = 200):
        """Fit to dequantised pixels ``v`` (N, D) with sklearn (k-means initialisation, diagonal covariances, EM);
        returns the fitted ``sklearn.mixture.GaussianMixture``."""
        from sklearn.mixture import GaussianMixture

        mixture = GaussianMixture(
            self.components, covariance_type="diag", reg_covar=reg_covar, max_iter=max_iter, random_state=seed
        )
        mixture.fit(np.asarray(v, dtype=np.float64))
        device = self.means.device
        self.log_weights.copy_(torch.from_numpy(np.log(mixture.weights_)).to(device))
        self.means.copy_(torch.from_numpy(mixture.means_).to(device))
        self.variances.copy_(torch.from_numpy(mixture.covariances_).to(device))
        self.fitted.fill_(True)
        return mixture

    def component_log_densities(self, v: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(v; mu_k, diag(sigma_k^2)) for every row and component, (N, K), float64."""
        v = v.to(torch.float64)
        squared = ((v[:, None, :] - self.means[None]) ** 2 / self.variances[None]).sum(dim=2)
        log_normaliser = (LOG_2PI + self.variances.log()).sum(dim=1)
        return self.log_weights[None] - 0.5 * (squared + log_normaliser[None])

    def log_density(self, v: torch.Tensor) -> torch.Tensor:
        """log p(v) = logsumexp_k [log pi_k + log N(v; mu_k, Sigma_k)], (N,) float64 (sklearn's score_samples)."""
        return torch.logsumexp(self.component_log_densities(v), dim=1)

    def responsibilities(self, v: torch.Tensor) -> torch.Tensor:
        """q(k | v), (N, K)."""
        return torch.softmax(self.component_log_densities(v), dim=1)

    def sample_components(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """k ~ q(k | v), (N,) long."""
        return torch.multinomial(self.responsibilities(v).float(), 1, generator=generator).squeeze(1)

    def condition(
        self, components: torch.Tensor, mode: str = "mean", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """y for components k (N,): mu_k ("mean") or a draw of N(mu_k, diag(sigma_k^2)) ("sample"), (N, D) float32
        clamped to [0, 1] (appendix D.1)."""
        means = self.means[components]
        if mode == "mean":
            y = means
        elif mode == "sample":
            noise = torch.randn(
                means.shape,
                generator=generator,
                dtype=torch.float64,
                device=generator.device if generator is not None else means.device,
            )
            y = means + noise.to(means.device) * self.variances[components].sqrt()
        else:
            raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
        return y.clamp(0.0, 1.0).float()


# --------------------------------------------------------------------------------------------------------------
# stage two: the conditional coupling flow (Y, Z) -> X
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MSFlowConfig(StageTwoConfig):
    """MS-FLOW options. residual_dim: not a choice for a flow — |Z| is the data's dimension C H W (a flow keeps the
    dimension; ``MSFlow.residual_dim`` says so); the field only records what the stage passed (the shared
    ``stage_two.residual_dim`` every variant receives). coupling_layers / hidden_units / hidden_layers: the couplings
    and their MLP conditioners; scale_bound: the soft clamp of the log-scales; logit_alpha: RealNVP's alpha;
    data_init: initialise the conditional base from the first training batch; mask_seed: the coupling splits;
    mixture_components: the appendix-D mixture (0 = none, the pipeline's y is the condition); mixture_reg_covar:
    added to the mixture's variances. Any image size works (the conditioners are MLPs); parameters grow as
    ~(2.5 D hidden_units) per coupling, so keep hidden_units small for 64 x 64 x 3 data."""

    residual_dim: int = 0
    coupling_layers: int = 8
    hidden_units: int = 512
    hidden_layers: int = 2
    scale_bound: float = 2.0
    logit_alpha: float = 0.05
    data_init: bool = True
    mask_seed: int = 0
    mixture_components: int = 0
    mixture_reg_covar: float = 3e-5

    @property
    def data_dim(self) -> int:
        return int(self.image_channels) * int(self.image_size) ** 2

    def validate(self) -> None:
        # not super().validate(): a flow is not tied to the conv networks' 32 / 64 image sizes
        for name, minimum in (
            ("image_channels", 1),
            ("image_size", 2),
            ("coupling_layers", 1),
            ("hidden_units", 1),
            ("hidden_layers", 1),
            ("mixture_components", 0),
        ):
            if not int(getattr(self, name)) >= minimum:
                raise ConfigError(name, f"must be >= {minimum}, got {getattr(self, name)}")
        if not int(self.residual_dim) >= 0:
            raise ConfigError("residual_dim", f"must be >= 0, got {self.residual_dim}")
        if not 0 < self.logit_alpha < 0.5:
            raise ConfigError("logit_alpha", f"must be in (0, 0.5), got {self.logit_alpha}")
        if not self.scale_bound > 0:
            raise ConfigError("scale_bound", f"must be > 0, got {self.scale_bound}")
        if not self.mixture_reg_covar > 0:
            raise ConfigError("mixture_reg_covar", f"must be > 0, got {self.mixture_reg_covar}")


class MSFlow(StageTwoModel):
    """Conditional coupling flow p(x | y) with an optional Gaussian-mixture stage one (module docstring).
    conditioning "y"; the residual z is the flow's latent (C H W units), inferred exactly."""

    conditioning: ClassVar[str] = "y"
    logged_terms: ClassVar[tuple[str, ...]] = ("bits_per_dim",)

    def __init__(self, config: MSFlowConfig | None = None) -> None:
        super().__init__()
        self.config = config or MSFlowConfig()
        c = self.config
        dim = c.data_dim
        self.elementwise = ConditionalElementwiseAffine(dim)
        self.flow = ConditionalCouplingFlow(
            dim, dim, c.coupling_layers, c.hidden_units, c.hidden_layers, c.scale_bound, c.mask_seed
        )
        self.mixture = GaussianMixtureStageOne(c.mixture_components, dim) if c.mixture_components else None

    @property
    def residual_dim(self) -> int:
        return self.config.data_dim

    @property
    def dtype(self) -> torch.dtype:
        """The flow's working precision (that of its parameters: float32 unless converted)."""
        return self.elementwise.weights.dtype

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (int(c.image_channels), int(c.image_size), int(c.image_size))

    # ------------------------------------------------------------------------------------------------ pieces
    def _flat(self, images: torch.Tensor, name: str) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.image_shape and images.shape[1:].numel() != self.residual_dim:
            raise ValueError(
                f"MS-FLOW expects {name} of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(images.shape)}"
            )
        return images.reshape(images.shape[0], -1)

    def condition_features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, h) from y in [0, 1]: t = logit(alpha + (1 - 2 alpha) y) for the elementwise layer (x's own
        transform, so a = 1, b = 0 reads "x is y"), h = 2 y - 1 for the couplings; both (N, D)."""
        y = self._flat(as_unit_float(y), "y").to(self.dtype).clamp(0.0, 1.0)
        t, _ = logit_transform(y, self.config.logit_alpha)
        return t, 2.0 * y - 1.0

    def latent_and_log_det(self, v: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and log|det dz/dv| for dequantised v (N, C, H, W) or (N, D) given y."""
        t, h = self.condition_features(y)
        w, log_det = logit_transform(self._flat(v, "v").to(self.dtype), self.config.logit_alpha)
        w, elementwise_log_det = self.elementwise(w, t)
        z, flow_log_det = self.flow(w, h)
        return z, log_det + elementwise_log_det + flow_log_det

    def log_density(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(v | y) of dequantised pixels v in [0, 1)^D, (N,) nats (the density of v itself)."""
        z, log_det = self.latent_and_log_det(v, y)
        return standard_normal_log_density(z) + log_det

    # ------------------------------------------------------------------------------------------------ interface
    def log_likelihood(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """log p(v | y) - D log 256 with v = dequantise(x, noise): nats per 8-bit image (module docstring), (N,)."""
        return self.log_density(dequantise(x, noise, generator), cond) - self.residual_dim * LOG_256

    def objective(
        self, x: torch.Tensor, cond: torch.Tensor, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """loss = -log_likelihood (mean nats per image, one fresh dequantisation per image). The first training
        batch initialises the conditional base (``data_init``). logs: loss, nll, bits_per_dim."""
        if self.training and self.config.data_init and not bool(self.elementwise.initialised):
            with torch.no_grad():
                t, _ = self.condition_features(cond)
                w, _ = logit_transform(self._flat(dequantise(x), "x"), self.config.logit_alpha)
                self.elementwise.initialise_from(w, t)
        nll = -self.log_likelihood(x, cond).mean()
        bits_per_dim = nll.detach() / (self.residual_dim * math.log(2.0))
        return nll, {"loss": float(nll.detach()), "nll": float(nll.detach()), "bits_per_dim": float(bits_per_dim)}

    @torch.no_grad()
    def infer_residual(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """z = f(v; y) exactly, with v the midpoint dequantisation (round(255 x) + 1/2) / 256; (N, C H W)."""
        levels = quantised_levels(x)
        return self.latent_and_log_det((levels + 0.5) / 256.0, cond)[0]

    @torch.no_grad()
    def generate(self, cond: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """v = f^-1(z; y) clamped to [0, 1], (N, C, H, W). ``cond`` None draws y = mu_k, k ~ pi, from the mixture."""
        if cond is None:
            cond = self.mixture_sample_condition(len(z))
        t, h = self.condition_features(cond)
        w = self.elementwise.inverse(self.flow.inverse(z.to(self.dtype), h), t)
        return inverse_logit_transform(w, self.config.logit_alpha).clamp(0.0, 1.0).reshape(-1, *self.image_shape)

    # ------------------------------------------------------------------------------------------------ mixture
    def _require_mixture(self) -> GaussianMixtureStageOne:
        if self.mixture is None or not bool(self.mixture.fitted):
            raise RuntimeError(
                "this MS-FLOW has no fitted mixture: build it with mixture_components > 0 and call "
                "fit_mixture(images) first"
            )
        return self.mixture

    def fit_mixture(self, images: torch.Tensor | np.ndarray, seed: int = 0):
        """Fit the stage-one mixture (``mixture_components``) to dequantised training images (N, C, H, W) (uint8
        or [0, 1]); one dequantisation draw per image from ``seed``. Returns the sklearn GaussianMixture."""
        if self.mixture is None:
            raise RuntimeError("mixture_components is 0: this MS-FLOW has no stage-one mixture to fit")
        images = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
        v = dequantise(images.cpu(), generator=torch.Generator().manual_seed(seed))
        return self.mixture.fit(v.reshape(len(v), -1).double().numpy(), self.config.mixture_reg_covar, seed)

    def mixture_condition(
        self,
        x: torch.Tensor,
        mode: str = "mean",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The paired y of images x: k ~ q(k | v), y = mu_k ("mean") or y ~ N(mu_k, Sigma_k) ("sample"), shaped
        like x (appendix D.1)."""
        mixture = self._require_mixture()
        v = dequantise(x, noise, generator).reshape(len(x), -1)
        components = mixture.sample_components(v, generator)
        return mixture.condition(components, mode, generator).reshape(-1, *self.image_shape)

    def mixture_sample_condition(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = mu_k for k ~ pi, (n, C, H, W)."""
        mixture = self._require_mixture()
        components = torch.multinomial(mixture.log_weights.exp().float(), n, replacement=True, generator=generator)
        return mixture.condition(components.to(mixture.means.device)).reshape(-1, *self.image_shape)

    @torch.no_grad()
    def mixture_log_likelihood(
        self,
        x: torch.Tensor,
        flow: bool = True,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Nats per 8-bit image (module docstring) of the whole model, (N,) float64: with ``flow``,
        log sum_k pi_k p_flow(v | mu_k) (the mixture + flow); without, the mixture alone log sum_k pi_k N(v; mu_k,
        Sigma_k) (sklearn's ``score_samples`` of v minus D log 256). Same v for both when ``noise`` is given."""
        mixture = self._require_mixture()
        v = dequantise(x, noise, generator).reshape(len(x), -1)
        if not flow:
            return mixture.log_density(v) - self.residual_dim * LOG_256
        terms = torch.stack(
            [
                mixture.log_weights[k]
                + self.log_density(
                    v, mixture.condition(torch.full((len(v),), k, dtype=torch.long, device=v.device))
                ).double()
                for k in range(mixture.components)
            ],
            dim=1,
        )
        return torch.logsumexp(terms, dim=1) - self.residual_dim * LOG_256
