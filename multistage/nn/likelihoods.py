"""Decoder likelihoods p(x|z) of the stage-one models: the Bernoulli of the disentanglement literature and the
Gaussians of the noise-modelling paper (sec. 7.1), with a fixed or learned variance.

Every likelihood turns the decoder's raw output into ``negative_log_likelihood(output, x)`` (summed over the
elements of each item, batch mean, nats), ``mean(output)`` (E[p(x|z)]) and ``logs()`` (the decoder variance).
Names: ``bernoulli``, ``gaussian`` (fixed variance), ``gaussian_learned`` (one learned variance),
``gaussian_learned_per_pixel``. A learned variance is bounded below by ``MIN_VARIANCE``. Why a fixed variance is
a beta: docs/stage-one.md, "Decoder likelihoods".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "gaussian_learned_per_pixel")
MIN_VARIANCE = 1e-4
DEFAULT_GAUSSIAN_VARIANCE = 0.05
LOG_2PI = math.log(2.0 * math.pi)


class BernoulliLikelihood(nn.Module):
    name = "bernoulli"

    def negative_log_likelihood(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output, x, reduction="sum") / x.shape[0]

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)

    def logs(self) -> dict[str, torch.Tensor]:
        return {}


class GaussianLikelihood(nn.Module):
    """N(x | output, sigma^2) with sigma^2 fixed (``learned=None``), one learned scalar (``"global"``) or learned
    per element of the data shape (``"per_pixel"``); ``variance`` is the fixed value or the starting value."""

    def __init__(
        self, data_shape: Sequence[int], variance: float = DEFAULT_GAUSSIAN_VARIANCE, learned: str | None = None
    ) -> None:
        super().__init__()
        if not variance > 0:
            raise ValueError(f"the Gaussian decoder variance must be > 0, got {variance}")
        if learned not in (None, "global", "per_pixel"):
            raise ValueError(f"learned must be None, 'global' or 'per_pixel', got {learned!r}")
        self.learned = learned
        self.name = {None: "gaussian", "global": "gaussian_learned", "per_pixel": "gaussian_learned_per_pixel"}[learned]
        start = math.log(max(float(variance), MIN_VARIANCE))
        shape = tuple(int(s) for s in data_shape) if learned == "per_pixel" else ()
        initial = torch.full(shape, start)
        if learned is None:
            self.register_buffer("raw_log_variance", initial)
        else:
            self.raw_log_variance = nn.Parameter(initial)

    @property
    def log_variance(self) -> torch.Tensor:
        """log sigma^2, bounded below by log ``MIN_VARIANCE`` (scalar, or the data shape per pixel)."""
        return self.raw_log_variance.clamp(min=math.log(MIN_VARIANCE))

    def negative_log_likelihood(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_variance = self.log_variance
        squared = (x - output) ** 2 * torch.exp(-log_variance)
        elements = math.prod(x.shape[1:])
        if log_variance.dim() == 0:
            log_term = elements * (log_variance + LOG_2PI)
        else:
            log_term = log_variance.sum() + elements * LOG_2PI
        return 0.5 * (squared.sum() / x.shape[0] + log_term)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def logs(self) -> dict[str, torch.Tensor]:
        variance = torch.exp(self.log_variance.detach())
        if variance.dim() == 0:
            return {"decoder_variance": variance}
        return {
            "decoder_variance": variance.mean(),
            "decoder_variance.min": variance.min(),
            "decoder_variance.max": variance.max(),
        }


def build_likelihood(name: str, data_shape: Sequence[int], variance: float | None = None) -> nn.Module:
    """The likelihood ``name`` (see the table in the module docstring) for data of ``data_shape``."""
    if name == "bernoulli":
        if variance is not None:
            raise ValueError("a variance is only used by the Gaussian likelihoods, not by 'bernoulli'")
        return BernoulliLikelihood()
    learned = {"gaussian": None, "gaussian_learned": "global", "gaussian_learned_per_pixel": "per_pixel"}
    if name not in learned:
        raise ValueError(f"unknown likelihood {name!r}; allowed: {', '.join(LIKELIHOODS)}")
    return GaussianLikelihood(data_shape, DEFAULT_GAUSSIAN_VARIANCE if variance is None else variance, learned[name])
