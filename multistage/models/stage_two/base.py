"""The interface every stage-two model implements (MS-VAE, MS-GAN, MS-FLOW, the baselines and the ablations).

How a variant joins the pipeline (one line, one params sub-section):

* write ``class MyModel(StageTwoModel)`` with a config dataclass extending :class:`StageTwoConfig` (its
  ``validate()`` calls ``super().validate()`` and raises :class:`ConfigError` ``(field, message)``);
* add ``"myvariant": (MyModel, MyConfig)`` to ``STAGE_TWO`` in ``multistage/models/registry.py``;
* give its options a sub-section ``stage_two.myvariant:`` in params.yaml (the keys are the config's fields, except
  ``image_channels``/``image_size``, which the data fixes). The stage ``stages/train_stage_two.py`` builds the
  model with ``registry.build("stage_two", name, image_channels=..., image_size=..., **params.stage_two.<name>)``,
  so an unknown key is rejected with its name. The shared training options (residual_dim, steps, batch_size,
  learning_rate, seed, ...) live in ``stage_two:`` itself; a sub-section may override ``residual_dim``, ``steps``,
  ``batch_size`` and ``learning_rate`` for its variant (e.g. ``stage_two.msgan.learning_rate``). The model's own
  learning rates (a discriminator's) are config fields. ``stage_two.variants`` lists which variants ``dvc repro``
  trains (``stage_two@<variant>`` writes ``models/stage_two/<variant>/`` and ``metrics/stage_two_<variant>.json``).

The contract (MS-VAE sec. 3.2: stage two models the sub-graph (Y, Z) -> X, Z injected only through AdaIN/FiLM):

* ``conditioning: ClassVar[str]`` — what the model is trained on besides x: ``"y"`` (the stage-one mean
  reconstruction y = E[p(y|c)], the paired set), ``"c"`` (the stage-one code c of the same pair) or ``"none"``
  (learns from x alone: Big-VAE, beta-TCVAE-L, the end-to-end ablation). The stage hands ``cond`` accordingly
  (``None`` for "none"); with ``pairs.samples_per_x = k`` each x appears with k different y (or c).
* ``objective(x, cond, step=None) -> (loss, logs)``: x float in [0, 1] (uint8 accepted), (N, C, H, W); logs a flat
  dict of floats, always ``loss``, and ``recon``/``kl`` where they exist. A model with its own adversary (MS-GAN)
  updates it inside ``objective`` (in training mode with gradients on), as FactorVAE does, and exposes
  ``optimised_parameters()`` (what the loop's optimiser moves) and ``auxiliary_state()`` (extra optimisers a
  checkpoint keeps). ``step`` drives schedules; ``None`` means "every schedule finished".
* ``residual_dim`` (|Z|) and ``latent_dim``, the width of the z that ``generate`` takes: |Z| for the conditioned
  variants, the whole latent (C, Z) for the "none" ones; ``sample_residual(n, generator=None) -> (n, latent_dim)``
  from the prior (N(0, I) unless a model says otherwise);
* ``infer_residual(x, cond) -> z``: the posterior mean (or an encoder's output). A model without an encoder raises
  ``NotImplementedError``; the evaluate stage then reports null for reconstruction-based keys and scores samples.
* ``generate(cond, z) -> x`` in [0, 1] (probabilities / means); ``reconstruct(x, cond)`` is
  ``generate(cond, infer_residual(x, cond))``; ``sample(cond, generator=None)`` uses the prior.
* optional ``log_likelihood(x, cond) -> (N,)`` nats (MS-FLOW exact; a VAE may give its ELBO).
* ``code(x)`` (optional): for the "none" variants that own a disentangled code (beta-TCVAE-L's first |C| units,
  the end-to-end model's C), the (N, code_dim) representation the metrics score; conditioned variants use the
  stage-one encoder and raise ``NotImplementedError`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
from torch import nn

from multistage.models.stage_one.base import ConfigError, as_unit_float
from multistage.nn.conv import SUPPORTED_IMAGE_SIZES

CONDITIONINGS = ("y", "c", "none")

__all__ = ["CONDITIONINGS", "ConfigError", "StageTwoConfig", "StageTwoModel", "as_unit_float"]


@dataclass
class StageTwoConfig:
    """Options every stage-two model shares. The data fixes ``image_channels`` and ``image_size``; ``residual_dim``
    is |Z|, the size of the residual code. Subclasses add their own options and extend ``validate``."""

    image_channels: int = 1
    image_size: int = 64
    residual_dim: int = 5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        for name in ("image_channels", "residual_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.image_size not in SUPPORTED_IMAGE_SIZES:
            raise ConfigError("image_size", f"must be one of {SUPPORTED_IMAGE_SIZES}, got {self.image_size!r}")


def check_non_negative(config: object, *names: str) -> None:
    """ConfigError unless every option in ``names`` is >= 0."""
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ConfigError(name, f"must be >= 0, got {value}")


def check_positive(config: object, *names: str) -> None:
    """ConfigError unless every option in ``names`` is >= 1 (integers) / > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ConfigError(name, f"must be > 0, got {value}")


class StageTwoModel(nn.Module):
    """Base class of every stage-two variant (see the module docstring for the contract)."""

    conditioning: ClassVar[str] = "y"
    # the loss terms worth a progress-bar entry and a curve (besides ``loss``)
    logged_terms: ClassVar[tuple[str, ...]] = ("recon", "kl")
    config: StageTwoConfig

    @property
    def residual_dim(self) -> int:
        return int(self.config.residual_dim)

    @property
    def latent_dim(self) -> int:
        """Width of the z ``generate`` takes (|Z| here; "none" variants: their whole latent)."""
        return self.residual_dim

    # ------------------------------------------------------------------------------------------------ training
    def objective(self, x: torch.Tensor, cond: torch.Tensor | None,
                  step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def optimised_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the training loop's optimiser updates (all of them unless a model says otherwise)."""
        return self.parameters()

    def auxiliary_state(self) -> dict[str, object]:
        """State holders (``state_dict``/``load_state_dict``) beside the model's own that a checkpoint must keep."""
        return {}

    # ------------------------------------------------------------------------------------------------ inference
    def sample_residual(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z) = N(0, I), (n, latent_dim), on the model's device."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else device)
        return z.to(device)

    def infer_residual(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no encoder of the residual")

    def generate(self, cond: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """generate(cond, infer_residual(x, cond)): x rendered back from its own condition and residual."""
        return self.generate(cond, self.infer_residual(x, cond))

    @torch.no_grad()
    def sample(self, cond: torch.Tensor | None, n: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """generate(cond, z) with z ~ p(z); ``n`` is needed only when ``cond`` is None."""
        if cond is None and n is None:
            raise ValueError("sample(None) needs the number of samples n")
        return self.generate(cond, self.sample_residual(len(cond) if cond is not None else n, generator))

    def log_likelihood(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} gives no log-likelihood")

    def code(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no code of its own; score the stage-one encoder")
