"""Indicators that need no ground truth: the noise-modelling paper's section 6.2, and the KL per latent unit.

Noise-modelling paper, section 6.2, for Gaussian posteriors q(z|x_m) and the prior N(0, I):
* def. 1, eq. 5: E KL(q(z|x) || p(z)), analytic per image;
* eq. 10: q*(z), the factorised zero-mean Gaussian closest to the posteriors, in closed form
  s_h^2 = 1/M sum_m (sigma_mh^2 + mu_mh^2) (the paper fits it by gradient descent);
* def. 2-3, eq. 6-7: I_encoder(x; z) and, per dimension, I_encoder(x; z_h); a dimension is "used" above
  ``used_threshold`` nats;
* def. 4-5, eq. 8: KL(q(z) || p(z)) ~= E KL(q(z|x) || p(z)) - I_encoder(x; z).

JointVAE section 4, figure 8: the mean KL of each latent unit, ranked (``kl_per_unit``). The discrete code's class
accuracy (JointVAE section 4.1) is in ``multistage.metrics.clustering``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge

from multistage.metrics.checks import check_codes

__all__ = [
    "gaussian_kl_per_image",
    "noise_modelling_indicators",
    "kl_per_unit",
    "IndicatorsConfig",
    "KlPerUnitConfig",
    "indicators_metric",
    "kl_per_unit_metric",
]


def gaussian_kl_per_image(
    mu: np.ndarray, logvar: np.ndarray, mean: np.ndarray | float = 0.0, variance: np.ndarray | float = 1.0
) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(mean, variance)) per element (N, D)."""
    return 0.5 * (np.log(variance) - logvar + (np.exp(logvar) + (mu - mean) ** 2) / variance - 1.0)


def _names(count: int, names: Sequence[str] | None) -> list[str]:
    names = [f"z{j}" for j in range(count)] if names is None else list(names)
    if len(names) != count:
        raise ValueError(f"{len(names)} code names for {count} latent units")
    return names


def noise_modelling_indicators(
    mu: np.ndarray, logvar: np.ndarray, code_names: Sequence[str] | None = None, used_threshold: float = 0.1
) -> dict[str, float]:
    """Definitions 1-5 of the noise-modelling paper, section 6.2 (module docstring).

    Returns {"indicators.expected_kl", "indicators.encoder_mi", "indicators.encoder_mi.<unit>",
    "indicators.used_dimensions", "indicators.kl_aggregate_prior", "indicators.q_star_std.<unit>"} in nats.
    A constant unit has I_encoder = 0 and is not used.
    """
    mu = check_codes(mu, "mu")
    logvar = check_codes(logvar, "logvar", mu.shape[1])
    names = _names(mu.shape[1], code_names)
    q_star_variance = (np.exp(logvar) + mu**2).mean(axis=0)  # eq. 10, closed form
    expected_kl = gaussian_kl_per_image(mu, logvar).sum(axis=1).mean()
    per_unit = gaussian_kl_per_image(mu, logvar, 0.0, q_star_variance[None, :]).mean(axis=0)
    encoder_mi = per_unit.sum()
    result = {
        "indicators.expected_kl": float(expected_kl),
        "indicators.encoder_mi": float(encoder_mi),
        "indicators.used_dimensions": float(np.sum(per_unit > used_threshold)),
        "indicators.kl_aggregate_prior": float(expected_kl - encoder_mi),
    }
    result |= {f"indicators.encoder_mi.{name}": float(v) for name, v in zip(names, per_unit)}
    result |= {f"indicators.q_star_std.{name}": float(np.sqrt(v)) for name, v in zip(names, q_star_variance)}
    return result


def kl_per_unit(
    mu: np.ndarray, logvar: np.ndarray, code_names: Sequence[str] | None = None
) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Mean KL(q(z_j|x) || N(0, 1)) per unit (JointVAE figure 8): ({"kl_per_unit.<unit>": nats}, the
    (unit, nats) pairs ranked from the largest)."""
    mu = check_codes(mu, "mu")
    logvar = check_codes(logvar, "logvar", mu.shape[1])
    names = _names(mu.shape[1], code_names)
    values = gaussian_kl_per_image(mu, logvar).mean(axis=0)
    ranked = sorted(zip(names, values.tolist()), key=lambda pair: -pair[1])
    return {f"kl_per_unit.{name}": float(v) for name, v in zip(names, values)}, ranked


@dataclass(frozen=True)
class IndicatorsConfig:
    """``used_threshold``: nats of I_encoder(x; z_h) for a dimension to count as used."""

    used_threshold: Annotated[float, Ge(0)] = 0.1


@dataclass(frozen=True)
class KlPerUnitConfig:
    """The KL per unit has no settings."""


def indicators_metric(inputs, config: IndicatorsConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the noise-modelling indicators of the factor set's posteriors (no draws: ``seed`` unused)."""
    return noise_modelling_indicators(
        inputs.mu, inputs.logvar, inputs.code_names[: inputs.mu.shape[1]], config.used_threshold
    )


def kl_per_unit_metric(inputs, config: KlPerUnitConfig, seed: int) -> dict[str, float]:
    """Registry adapter: ``kl_per_unit.<unit>`` of the posteriors (no draws: ``seed`` unused)."""
    return kl_per_unit(inputs.mu, inputs.logvar, inputs.code_names[: inputs.mu.shape[1]])[0]
