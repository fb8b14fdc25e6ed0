"""The interface every stage-two model implements (MS-VAE, MS-GAN, MS-FLOW, the baselines and the ablations).

Stage two models the sub-graph (Y, Z) -> X of MS-VAE sec. 3.2, Z injected only through AdaIN/FiLM. A
`StageTwoModel` declares ``conditioning`` (``"y"``, ``"c"`` or ``"none"``: what it is trained on besides x) and
implements ``objective(x, cond, step) -> (loss, logs)``, ``infer_residual(x, cond)`` (``NotImplementedError``
without an encoder), ``generate(cond, z)``, ``sample_residual(n)``, and optionally ``log_likelihood(x, cond)`` and
``code(x)``. A variant joins the pipeline with one line in ``STAGE_TWO`` (``multistage/models/registry.py``) and a
``stage_two.<name>:`` sub-section in params.yaml whose keys are its config's fields (`StageTwoConfig`).
The contract in full: docs/stage-two.md, "The stage-two interface"; a worked example: docs/contributing.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

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
    def objective(
        self, x: torch.Tensor, cond: torch.Tensor | None, step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
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
        z = torch.randn(
            n, self.latent_dim, generator=generator, device=generator.device if generator is not None else device
        )
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
    def sample(
        self, cond: torch.Tensor | None, n: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """generate(cond, z) with z ~ p(z); ``n`` is needed only when ``cond`` is None."""
        if cond is None and n is None:
            raise ValueError("sample(None) needs the number of samples n")
        return self.generate(cond, self.sample_residual(len(cond) if cond is not None else n, generator))

    def log_likelihood(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} gives no log-likelihood")

    def code(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no code of its own; score the stage-one encoder")
