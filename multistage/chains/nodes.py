"""The node kinds a chain is built from (``multistage.chains.dag`` validates and orders them).

Every kind is a :class:`ChainNode` (a ``torch.nn.Module``) with a config dataclass (a declaration's ``options``)
whose ``validate()`` raises ``ConfigError(field, message)``. A node models its ``output`` given its ``inputs``:

* ``gaussian_mlp``: p(out | in) = N(mu(in), diag sigma^2), trained on (inputs, output) pairs;
* ``residual_vae``: p(out | in, z) with q(z | out, in), z through FiLM;
* ``stage_one``: a ``registry.STAGE_ONE`` model on its ``observed`` variable; derives the code c and y = E[p(y|c)];
* ``stage_two``: a ``registry.STAGE_TWO`` model (cond, z) -> x on (input, output) pairs.

The first two are the conditional Gaussians and the residual VAE of MS-VAE appendix C (the pendulum); the last two
wrap the image pipeline's models (sec. 3.2), so the two-stage pipeline is a chain too. The runner's interface:
``check_declaration``, ``provided_variables``, ``training_variables``, ``derived_variables`` (class level);
``prepare``, ``objective(values, step)``, ``generate``, ``infer_latent``, ``sample_latent``, ``derive``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from multistage.chains.spec import ChainError, NodeSpec
from multistage.models.stage_one.base import ConfigError, as_unit_float, gaussian_kl_per_unit
from multistage.nn.mlp import ACTIVATIONS, MLPEncoder

LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------------------ helpers
def flatten(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> float32 (N, features); uint8 images are scaled to [0, 1]."""
    return as_unit_float(x).reshape(x.shape[0], -1)


def features(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


class Standardizer(nn.Module):
    """u = (v - mean) / scale with one mean and one scale per variable (over its rows and elements), fitted on
    the training rows; a constant variable keeps scale 1. One pair per variable, not per element: a series whose
    first samples barely vary (a pendulum released from rest) would otherwise have them blown up into the
    largest terms of the loss. Buffers, so a checkpoint or model file restores the fitted values."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def fit(self, values: np.ndarray | torch.Tensor) -> None:
        values = flatten(torch.as_tensor(np.asarray(values))).double()
        std = values.std(unbiased=False)
        self.mean.copy_(values.mean().float())
        self.scale.copy_((std if std > 1e-6 else torch.ones_like(std)).float())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return (flatten(v) - self.mean) / self.scale

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.mean


def gaussian_nll(
    target: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """-log N(v; m, s^2 sigma^2) per row (summed over elements) for standardised u = (v - mean_v) / s:
    1/2 log 2 pi + log s + 1/2 log sigma^2 + (u - m)^2 / (2 sigma^2) — nats in the variable's own units."""
    per_element = 0.5 * (LOG_2PI + log_variance + (target - mean) ** 2 * torch.exp(-log_variance)) + log_scale
    return per_element.sum(dim=1)


def _check_sizes(config: object, name: str) -> None:
    sizes = getattr(config, name)
    if isinstance(sizes, (str, bytes)) or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ConfigError(name, f"must be a list of layer widths >= 1, got {sizes!r}")


def _check_choice(config: object, name: str, choices: Sequence[str]) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(name, f"unknown value {getattr(config, name)!r}; allowed: {', '.join(choices)}")


def config_from_options(config_class: type, options: Mapping[str, Any]):
    """``config_class(**options)``; an unknown option or a value of the wrong type is a ConfigError naming it."""
    allowed = [f.name for f in dataclasses.fields(config_class)]
    for name in options:
        if name not in allowed:
            raise ConfigError(name, f"unknown option; allowed options: {', '.join(allowed)}")
    hints = typing.get_type_hints(config_class)
    values = {}
    for name, value in options.items():
        hint = hints[name]
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if hint in (int, float, bool, str) and not (
            isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        ):
            raise ConfigError(name, f"must be {hint.__name__}, got {value!r}")
        if typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return config_class(**values)


class FiLM(nn.Module):
    """Feature-wise linear modulation by a latent code (MS-VAE sec. 3.2, "FiLM and AdaIN"): h -> gamma(z) * h +
    beta(z), gamma = 1 + g(z), beta = b(z); g and b are one small network whose last layer starts at zero, so the
    layer starts as the identity and z enters only as training finds it useful (as ``multistage.nn.adain``)."""

    def __init__(self, width: int, latent_dim: int, hidden: int = 64) -> None:
        super().__init__()
        last = nn.Linear(hidden if hidden else latent_dim, 2 * width)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.modulation = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), last) if hidden else last
        self.width = width

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.modulation(z)
        return h * (1.0 + out[:, : self.width]) + out[:, self.width :]


# ------------------------------------------------------------------------------------------------ the base
class ChainNode(nn.Module):
    """Base class of every node kind (module docstring)."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    logged_terms: ClassVar[tuple[str, ...]] = ("nll",)

    def __init__(self, spec: NodeSpec, config, shapes: Mapping[str, tuple[int, ...]], n_train: int) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in shapes.items()}
        self.n_train = int(n_train)

    # ---------------------------------------------------------------------------------- declaration level
    @classmethod
    def make_config(cls, options: Mapping[str, Any]):
        return config_from_options(cls.config_class, options)

    @classmethod
    def check_declaration(cls, node: NodeSpec):
        """The node's config (ChainError ``nodes.<node>.options.<field>`` when an option is bad)."""
        try:
            return cls.make_config(node.options)
        except ConfigError as error:
            raise ChainError(f"nodes.{node.name}.options.{error.field}", error.message) from None

    @classmethod
    def provided_variables(cls, node: NodeSpec) -> tuple[str, ...]:
        return (node.output,)

    @classmethod
    def training_variables(cls, node: NodeSpec) -> list[tuple[str, str]]:
        """(variable, declaration key) pairs the node reads while training."""
        return [(name, "inputs") for name in node.inputs] + [(node.output, "output")]

    @classmethod
    def derived_variables(cls, node: NodeSpec) -> tuple[str, ...]:
        return ()

    # ---------------------------------------------------------------------------------- training
    @property
    def latent_dim(self) -> int:
        return 0

    def prepare(self, train_values: Mapping[str, np.ndarray]) -> None:
        """Fit what depends on the training rows (nothing by default)."""

    def objective(
        self, values: Mapping[str, torch.Tensor], step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def optimised_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def auxiliary_state(self) -> dict[str, object]:
        return {}

    # ---------------------------------------------------------------------------------- inference
    def generate(self, values: Mapping[str, torch.Tensor], latent: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def infer_latent(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"node {self.spec.name!r} ({self.kind}) has no latent variable")

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), (n, latent_dim), on the node's device."""
        if not self.latent_dim:
            raise NotImplementedError(f"node {self.spec.name!r} ({self.kind}) has no latent variable")
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)

    def derive(
        self, arrays: Mapping[str, np.ndarray], device: torch.device, batch_size: int = 512
    ) -> dict[str, np.ndarray]:
        """The derived variables over every row (none by default)."""
        return {}


# ------------------------------------------------------------------------------------------------ gaussian_mlp
@dataclass
class GaussianMLPConfig:
    """Conditional Gaussian MLP: ``hidden`` layer widths, ``activation`` (relu | tanh); the variance is one value
    per output element, learned (``learn_variance``) from ``log_variance_init`` or fixed at it, in standardised
    units, and bounded below by ``log_variance_min`` (the data need not be noisy: the pendulum's are not)."""

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    learn_variance: bool = True
    log_variance_init: float = 0.0
    log_variance_min: float = -12.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_sizes(self, "hidden")
        _check_choice(self, "activation", tuple(ACTIVATIONS))


class _GaussianOutputNode(ChainNode):
    """What the two MLP kinds share: standardised inputs (one :class:`Standardizer` each, concatenated; a node
    without inputs sees a constant 0) and a Gaussian output whose log-variance per element is a parameter."""

    def __init__(
        self, spec: NodeSpec, config: GaussianMLPConfig, shapes: Mapping[str, tuple[int, ...]], n_train: int
    ) -> None:
        super().__init__(spec, config, shapes, n_train)
        self.input_scalers = nn.ModuleDict({name: Standardizer(features(self.shapes[name])) for name in spec.inputs})
        self.in_features = max(sum(features(self.shapes[name]) for name in spec.inputs), 1)
        self.out_features = features(self.shapes[spec.output])
        self.log_variance = nn.Parameter(
            torch.full((self.out_features,), float(config.log_variance_init)), requires_grad=config.learn_variance
        )

    def prepare(self, train_values: Mapping[str, np.ndarray]) -> None:
        for name, scaler in self.input_scalers.items():
            scaler.fit(train_values[name])

    def _inputs(self, values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        if not self.spec.inputs:
            return torch.zeros(n, 1, device=self.log_variance.device)
        return torch.cat([self.input_scalers[name](values[name]) for name in self.spec.inputs], dim=1)

    def _log_variance(self) -> torch.Tensor:
        return self.log_variance.clamp(min=self.config.log_variance_min)

    def _network(self, in_features: int, hidden: Sequence[int], out_features: int) -> MLPEncoder:
        return MLPEncoder((in_features,), out_features, hidden=hidden, activation=self.config.activation)


class GaussianMLPNode(_GaussianOutputNode):
    """p(out | in) = N(mu(in), diag(sigma^2)) — MS-VAE appendix C's "conditional Gaussian distribution" for
    L -> Y0 and (B, Y0) -> Y1. Inputs and output are standardised (training statistics, one mean and scale s per
    variable); the objective is the negative log-likelihood in the output's own units, nats per row, batch mean:

        -log p(v | in) = sum_i [1/2 log 2 pi + log s + 1/2 log sigma_i^2 + (u_i - mu_i(in))^2 / (2 sigma_i^2)],

    u = (v - mean) / s the standardised output (see :func:`gaussian_nll`). No inputs gives an unconditional
    Gaussian (a root node)."""

    kind: ClassVar[str] = "gaussian_mlp"
    config_class: ClassVar[type] = GaussianMLPConfig
    logged_terms: ClassVar[tuple[str, ...]] = ("nll", "rmse")

    def __init__(
        self, spec: NodeSpec, config: GaussianMLPConfig, shapes: Mapping[str, tuple[int, ...]], n_train: int
    ) -> None:
        super().__init__(spec, config, shapes, n_train)
        self.output_scaler = Standardizer(self.out_features)
        self.mean_network = self._network(self.in_features, config.hidden, self.out_features)

    def prepare(self, train_values: Mapping[str, np.ndarray]) -> None:
        super().prepare(train_values)
        self.output_scaler.fit(train_values[self.spec.output])

    def predict(self, values: Mapping[str, torch.Tensor], n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of p(out | in) in the output's own units, each (N, output elements)."""
        n = n if n is not None else len(next(iter(values.values())))
        mean = self.output_scaler.inverse(self.mean_network(self._inputs(values, n)))
        log_variance = self._log_variance() + 2.0 * torch.log(self.output_scaler.scale)
        return mean, log_variance.expand_as(mean)

    def objective(self, values, step=None):
        target = values[self.spec.output]
        n = target.shape[0]
        u = self.output_scaler(target)
        mu = self.mean_network(self._inputs(values, n))
        nll = gaussian_nll(u, mu, self._log_variance(), torch.log(self.output_scaler.scale)).mean()
        with torch.no_grad():
            rmse = torch.sqrt(((self.output_scaler.inverse(mu) - flatten(target)) ** 2).mean())
        value = float(nll.detach())
        return nll, {"loss": value, "nll": value, "rmse": float(rmse)}

    @torch.no_grad()
    def generate(self, values, latent=None):
        n = next(iter(values.values())).shape[0] if values else (len(latent) if latent is not None else 1)
        mean, _ = self.predict(values, n)
        return mean.reshape(n, *self.shapes[self.spec.output])


# ------------------------------------------------------------------------------------------------ residual_vae
@dataclass
class ResidualVAEConfig(GaussianMLPConfig):
    """Residual VAE: the decoder as :class:`GaussianMLPConfig` (``hidden``, ``activation``, the variance), and
    ``latent_dim`` units of z (prior N(0, I)); ``beta`` weights the KL (1: the ELBO); ``warmup_steps`` ramps that
    weight from 0; ``encoder_hidden`` the encoder's widths; ``film_hidden`` the FiLM network's hidden width (0:
    linear in z); ``residual``: the output is the first input plus a learned residual (needs the two to have one
    shape: Y1 -> theta); ``encoder_sees_inputs``: q(z | ...) reads the inputs beside the residual."""

    latent_dim: int = 1
    beta: float = 1.0
    warmup_steps: int = 0
    encoder_hidden: tuple[int, ...] = (256, 256)
    film_hidden: int = 64
    residual: bool = True
    encoder_sees_inputs: bool = True

    def validate(self) -> None:
        super().validate()
        if self.latent_dim < 1:
            raise ConfigError("latent_dim", f"must be >= 1, got {self.latent_dim}")
        if not self.beta >= 0:
            raise ConfigError("beta", f"must be >= 0, got {self.beta}")
        for name in ("warmup_steps", "film_hidden"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        _check_sizes(self, "encoder_hidden")


class ResidualVAENode(_GaussianOutputNode):
    """p(out | in, z) q(z | out, in): the VAE on the residual that ends MS-VAE appendix C's pendulum, (Z, Y1) ->
    theta, where z "models the residual between Y1 and the true observations" and comes to encode the unseen mass.
    It is MS-VAE eq. 2 term (b) with Gaussian observations, minimised as

        loss = -log N(out; mean(in, z), diag sigma^2) + beta * KL[q(z | out, in) || N(0, I)],   z ~ q (reparam.),

    the KL analytic (``gaussian_kl_per_unit``). As in stage two (sec. 3.2), z enters the decoder only through
    FiLM after every hidden layer, and the encoder reads the residual r = out - in (``residual``: the mean is
    in + a learned residual, zero at initialisation, so training starts from the input and learns what it lacks).
    Every variable is standardised (the residual with its own statistics)."""

    kind: ClassVar[str] = "residual_vae"
    config_class: ClassVar[type] = ResidualVAEConfig
    logged_terms: ClassVar[tuple[str, ...]] = ("nll", "kl", "rmse")

    def __init__(
        self, spec: NodeSpec, config: ResidualVAEConfig, shapes: Mapping[str, tuple[int, ...]], n_train: int
    ) -> None:
        out_shape = tuple(shapes[spec.output])
        if config.residual and (not spec.inputs or tuple(shapes[spec.inputs[0]]) != out_shape):
            first = tuple(shapes[spec.inputs[0]]) if spec.inputs else None
            raise ChainError(
                f"nodes.{spec.name}.options.residual",
                f"needs a first input of the output's shape {out_shape}, got {first}; set residual: false",
            )
        super().__init__(spec, config, shapes, n_train)
        self.target_scaler = Standardizer(self.out_features)  # of the residual (or of the output when not residual)
        widths = [self.in_features, *config.hidden]
        self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.films = nn.ModuleList(FiLM(width, config.latent_dim, config.film_hidden) for width in config.hidden)
        self.activation = ACTIVATIONS[config.activation]()
        self.head = nn.Linear(widths[-1], self.out_features)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        encoder_in = self.out_features + (self.in_features if config.encoder_sees_inputs else 0)
        self.encoder = self._network(encoder_in, config.encoder_hidden, 2 * config.latent_dim)

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    def _base(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return flatten(values[self.spec.inputs[0]]) if self.config.residual else None

    def _target(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The modelled quantity in the output's units: out - first input (residual) or out."""
        out = flatten(values[self.spec.output])
        base = self._base(values)
        return out if base is None else out - base

    def prepare(self, train_values: Mapping[str, np.ndarray]) -> None:
        super().prepare(train_values)
        names = [*self.spec.inputs, self.spec.output]
        self.target_scaler.fit(self._target({name: torch.as_tensor(np.asarray(train_values[name])) for name in names}))

    def encode(self, values: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | out, in), each (N, latent_dim)."""
        target = self.target_scaler(self._target(values))
        parts = [target] + ([self._inputs(values, len(target))] if self.config.encoder_sees_inputs else [])
        mu, logvar = self.encoder(torch.cat(parts, dim=1)).chunk(2, dim=1)
        return mu, logvar

    def decode_standardised(self, values: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean of the standardised target, (N, output elements); FiLM(z) after each hidden layer."""
        h = self._inputs(values, len(z))
        for layer, film in zip(self.decoder_layers, self.films):
            h = self.activation(film(layer(h), z))
        return self.head(h)

    def _output_mean(self, values, standardised: torch.Tensor) -> torch.Tensor:
        mean = self.target_scaler.inverse(standardised)
        base = self._base(values)
        return mean if base is None else base + mean

    def kl_weight(self, step: int | None) -> float:
        from multistage.train import linear_warmup

        return self.config.beta * (1.0 if step is None else linear_warmup(step, self.config.warmup_steps))

    def objective(self, values, step=None):
        u = self.target_scaler(self._target(values))
        mu, logvar = self.encode(values)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        mean = self.decode_standardised(values, z)
        nll = gaussian_nll(u, mean, self._log_variance(), torch.log(self.target_scaler.scale)).mean()
        kl_per_unit = gaussian_kl_per_unit(mu, logvar).mean(dim=0)
        kl = kl_per_unit.sum()
        loss = nll + self.kl_weight(step) * kl
        with torch.no_grad():
            rmse = torch.sqrt(((self.target_scaler.inverse(mean) - self.target_scaler.inverse(u)) ** 2).mean())
        logs = {"loss": float(loss.detach()), "nll": float(nll.detach()), "kl": float(kl.detach()), "rmse": float(rmse)}
        logs |= {f"kl_unit.{j}": float(v) for j, v in enumerate(kl_per_unit.detach())}
        return loss, logs

    @torch.no_grad()
    def generate(self, values, latent=None):
        n = len(latent) if latent is not None else next(iter(values.values())).shape[0]
        z = latent if latent is not None else torch.zeros(n, self.latent_dim, device=self.log_variance.device)
        mean = self._output_mean(values, self.decode_standardised(values, z))
        return mean.reshape(n, *self.shapes[self.spec.output])

    @torch.no_grad()
    def infer_latent(self, values):
        return self.encode(values)[0]


# ------------------------------------------------------------------------------------------------ registry wrappers
class _RegistryConfig:
    """Shared by the wrappers: ``model`` (a registry name) and the model's own options (``model_options``); in a
    declaration every option that is not one of the wrapper's own fields is one of the model's."""

    stage: ClassVar[str]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]):
        from multistage.models import registry

        own = {f.name for f in dataclasses.fields(cls)} - {"model_options"}
        config = config_from_options(cls, {k: v for k, v in options.items() if k in own})
        table = registry.REGISTRIES[cls.stage]
        if config.model not in table:
            raise ConfigError(
                "model", f"unknown {cls.stage} model {config.model!r}; allowed: {', '.join(sorted(table))}"
            )
        allowed = [f.name for f in dataclasses.fields(table[config.model][1])]
        model_options = {k: v for k, v in options.items() if k not in own}
        for name in model_options:
            if name not in allowed:
                raise ConfigError(
                    name,
                    f"unknown option of {cls.stage} model {config.model!r} (and not one of the "
                    f"node's own: {', '.join(sorted(own))}); its options: {', '.join(allowed)}",
                )
        config.model_options = model_options
        return config

    def build_model(self, data_options: Mapping[str, Any]) -> nn.Module:
        """The registry model with the data's shape options (those its config has) and ``model_options``."""
        from multistage.models import registry

        fields = {f.name for f in dataclasses.fields(registry.lookup(self.stage, self.model)[1])}
        options = {k: v for k, v in data_options.items() if k in fields} | dict(self.model_options)
        return registry.build(self.stage, self.model, **options)


def data_shape_options(shape: tuple[int, ...], n_train: int) -> dict[str, int]:
    """The config options the data fixes: channels and size of (C, S, S) images or the length of (C, T) series,
    and the training-set size (beta-TCVAE's estimators need it)."""
    options = {"image_channels": int(shape[0]), "dataset_size": int(n_train)}
    if len(shape) == 2:
        return options | {"series_length": int(shape[1])}
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"a registry model needs (C, S, S) images or (C, T) series, got rows of shape {shape}")
    return options | {"image_size": int(shape[1])}


def _build_wrapped(spec: NodeSpec, config: _RegistryConfig, shape: tuple[int, ...], n_train: int) -> nn.Module:
    try:
        return config.build_model(data_shape_options(shape, n_train))
    except ConfigError as error:
        raise ChainError(f"nodes.{spec.name}.options.{error.field}", error.message) from None
    except ValueError as error:
        raise ChainError(f"nodes.{spec.name}.options", str(error)) from None


class _RegistryNode(ChainNode):
    """What the two wrappers share: the registry model, built for the variable it models, in ``self.model``; its
    optimiser and auxiliary state are the model's own (FactorVAE's or MS-GAN's adversary stays inside it)."""

    logged_terms: ClassVar[tuple[str, ...]] = ("recon", "kl")

    def __init__(
        self, spec: NodeSpec, config: _RegistryConfig, shapes: Mapping[str, tuple[int, ...]], n_train: int
    ) -> None:
        super().__init__(spec, config, shapes, n_train)
        self.model = _build_wrapped(spec, config, self.shapes[self.modelled_variable(spec, config)], n_train)

    @staticmethod
    def modelled_variable(spec: NodeSpec, config: _RegistryConfig) -> str:
        return spec.output

    @classmethod
    def make_config(cls, options):
        return cls.config_class.from_options(options)

    def optimised_parameters(self):
        return self.model.optimised_parameters()

    def auxiliary_state(self):
        return self.model.auxiliary_state()


@dataclass
class StageOneNodeConfig(_RegistryConfig):
    """A stage-one model as a node: ``model`` (``registry.STAGE_ONE`` name), ``observed`` (the variable it encodes,
    e.g. x), ``code`` (the name of the derived code variable), ``use_mean`` (derive c as the posterior mean
    instead of a sample c ~ q(c|x), as ``pairs.use_mean``), ``pairing_seed`` (the noise of those samples)."""

    stage: ClassVar[str] = "stage_one"
    model: str = "betatcvae"
    observed: str = "x"
    code: str = "c"
    use_mean: bool = False
    pairing_seed: int = 0
    model_options: dict = field(default_factory=dict)


class StageOneNode(_RegistryNode):
    """A ``registry.STAGE_ONE`` model (MS-VAE sec. 3.2, stage one) as a node with no inputs: it trains on its
    ``observed`` variable x, generates its ``output`` y = E[p(y|c)] = ``decode_mean(c)`` from its code c, and,
    once trained, derives c ~ q(c|x) (or the mean) and y for every row: the paired set of appendix I, made by
    ``multistage.models.stage_two.pairing.make_pairs`` (one sample per row)."""

    kind: ClassVar[str] = "stage_one"
    config_class: ClassVar[type] = StageOneNodeConfig

    @staticmethod
    def modelled_variable(spec: NodeSpec, config: StageOneNodeConfig) -> str:
        return config.observed

    @classmethod
    def check_declaration(cls, node):
        config = super().check_declaration(node)
        if node.inputs:
            raise ChainError(
                f"nodes.{node.name}.inputs",
                "a stage_one node has no inputs (its code c is its own "
                f"latent variable); it reads options.observed ({config.observed!r})",
            )
        return config

    @classmethod
    def provided_variables(cls, node):
        return (node.output, cls.make_config(node.options).code)

    @classmethod
    def training_variables(cls, node):
        return [(cls.make_config(node.options).observed, "options.observed")]

    @classmethod
    def derived_variables(cls, node):
        return cls.provided_variables(node)

    @property
    def latent_dim(self) -> int:
        return int(self.model.code_dim)

    def objective(self, values, step=None):
        return self.model.objective(as_unit_float(values[self.config.observed]), step)

    @torch.no_grad()
    def generate(self, values, latent=None):
        if latent is None:
            raise ValueError(f"node {self.spec.name!r} generates y from a code c: pass the latent")
        return self.model.decode_mean(latent)

    @torch.no_grad()
    def infer_latent(self, values):
        return self.model.representation(as_unit_float(values[self.config.observed]))

    def derive(self, arrays, device, batch_size=512):
        from multistage.models.stage_two.pairing import make_pairs

        pairs = make_pairs(
            self.model,
            arrays[self.config.observed],
            samples_per_x=1,
            use_mean=self.config.use_mean,
            batch_size=batch_size,
            seed=self.config.pairing_seed,
            device=device,
        )
        return {self.config.code: pairs["c"], self.spec.output: pairs["y"].astype(np.float32)}


@dataclass
class StageTwoNodeConfig(_RegistryConfig):
    """A stage-two model as a node: ``model`` (``registry.STAGE_TWO`` name); its other options are the model's."""

    stage: ClassVar[str] = "stage_two"
    model: str = "msvae"
    model_options: dict = field(default_factory=dict)


class StageTwoNode(_RegistryNode):
    """A ``registry.STAGE_TWO`` model (MS-VAE sec. 3.2, stage two: (Y, Z) -> X) as a node: ``inputs`` is the one
    conditioning variable (y, or c for a model conditioned on codes; none for a model conditioned on nothing),
    ``output`` the images it renders; its latent is the residual z."""

    kind: ClassVar[str] = "stage_two"
    config_class: ClassVar[type] = StageTwoNodeConfig

    def __init__(
        self, spec: NodeSpec, config: StageTwoNodeConfig, shapes: Mapping[str, tuple[int, ...]], n_train: int
    ) -> None:
        super().__init__(spec, config, shapes, n_train)
        conditioning = self.model.conditioning
        if (conditioning == "none") != (not spec.inputs):
            raise ChainError(
                f"nodes.{spec.name}.inputs",
                f"stage-two model {config.model!r} is conditioned on "
                f"{conditioning!r}: it takes {'no input' if conditioning == 'none' else 'one input'}",
            )

    @classmethod
    def check_declaration(cls, node):
        config = super().check_declaration(node)
        if len(node.inputs) > 1:
            raise ChainError(f"nodes.{node.name}.inputs", "a stage_two node takes one conditioning input (y or c)")
        return config

    @property
    def latent_dim(self) -> int:
        return int(self.model.residual_dim)

    def _condition(self, values) -> torch.Tensor | None:
        return values[self.spec.inputs[0]].float() if self.spec.inputs else None

    def objective(self, values, step=None):
        return self.model.objective(as_unit_float(values[self.spec.output]), self._condition(values), step)

    @torch.no_grad()
    def generate(self, values, latent=None):
        condition = self._condition(values)
        z = latent if latent is not None else self.model.sample_residual(len(condition))
        return self.model.generate(condition, z)

    @torch.no_grad()
    def infer_latent(self, values):
        return self.model.infer_residual(as_unit_float(values[self.spec.output]), self._condition(values))


NODE_CLASSES: dict[str, type[ChainNode]] = {
    cls.kind: cls for cls in (GaussianMLPNode, ResidualVAENode, StageOneNode, StageTwoNode)
}
NODE_KINDS: tuple[str, ...] = tuple(NODE_CLASSES)


def kind_class(kind: str) -> type[ChainNode]:
    if kind not in NODE_CLASSES:
        raise ValueError(f"unknown node kind {kind!r}; allowed kinds: {', '.join(NODE_KINDS)}")
    return NODE_CLASSES[kind]


def build_node(spec: NodeSpec, shapes: Mapping[str, tuple[int, ...]], n_train: int) -> ChainNode:
    """A fresh node of ``spec.kind`` for variables of these per-row ``shapes``; bad options raise ChainError."""
    cls = kind_class(spec.kind)
    config = cls.check_declaration(spec)
    return cls(spec, config, shapes, n_train)
