"""Conditional normalising-flow layers for MS-FLOW (MS-VAE appendix D): RealNVP affine coupling layers (Dinh,
Sohl-Dickstein and Bengio 2017) conditioned on an external input, an elementwise conditional affine layer, and
the logit pre-processing of RealNVP sec. 4.1.

Every layer maps a batch w (N, D) (and a condition) to (u, log|det du/dw|) with ``forward`` and back with
``inverse``; the log-determinant is per row, (N,). `ConditionalAffineCoupling` (soft-clamped scales, identity at
initialisation), `ConditionalCouplingFlow` (alternating complementary splits), `ConditionalElementwiseAffine`
(data-dependent initialisation) and `logit_transform`: their equations are in docs/stage-two.md, "Coupling layers".
"""

from __future__ import annotations

import math

import torch
from torch import nn


def logit_transform(v: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w = logit(s), s = alpha + (1 - 2 alpha) v, for v (N, D) in [0, 1]; returns (w, log|det dw/dv|) with
    log|det| = sum_d [log(1 - 2 alpha) - log s_d - log(1 - s_d)] (RealNVP sec. 4.1)."""
    s = alpha + (1.0 - 2.0 * alpha) * v
    w = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1.0 - 2.0 * alpha) - torch.log(s) - torch.log1p(-s)).sum(dim=1)
    return w, log_det


def inverse_logit_transform(w: torch.Tensor, alpha: float) -> torch.Tensor:
    """v = (sigmoid(w) - alpha) / (1 - 2 alpha), the inverse of :func:`logit_transform` (not clamped)."""
    return (torch.sigmoid(w) - alpha) / (1.0 - 2.0 * alpha)


class ConditionalAffineCoupling(nn.Module):
    """One affine coupling layer over D dimensions, kept half ``kept`` / changed half ``changed`` (index tensors),
    conditioned on features h (N, condition_features); see the module docstring."""

    def __init__(
        self,
        kept: torch.Tensor,
        changed: torch.Tensor,
        condition_features: int,
        hidden: int = 512,
        hidden_layers: int = 2,
        scale_bound: float = 2.0,
    ) -> None:
        super().__init__()
        if hidden < 1 or hidden_layers < 1:
            raise ValueError(f"hidden and hidden_layers must be >= 1, got {hidden} and {hidden_layers}")
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}")
        self.register_buffer("kept", torch.as_tensor(kept, dtype=torch.long).clone())
        self.register_buffer("changed", torch.as_tensor(changed, dtype=torch.long).clone())
        self.scale_bound = float(scale_bound)
        sizes = [len(self.kept) + int(condition_features)] + [int(hidden)] * int(hidden_layers)
        modules: list[nn.Module] = []
        for previous, current in zip(sizes[:-1], sizes[1:]):
            modules += [nn.Linear(previous, current), nn.ReLU()]
        last = nn.Linear(sizes[-1], 2 * len(self.changed))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.conditioner = nn.Sequential(*modules, last)

    def scale_and_shift(self, w_kept: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = w_kept if h is None else torch.cat([w_kept, h], dim=1)
        raw_scale, shift = self.conditioner(inputs).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_scale / self.scale_bound), shift

    def forward(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.scale_and_shift(w[:, self.kept], h)
        u = w.clone()
        u[:, self.changed] = w[:, self.changed] * torch.exp(scale) + shift
        return u, scale.sum(dim=1)

    def inverse(self, u: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        scale, shift = self.scale_and_shift(u[:, self.kept], h)
        w = u.clone()
        w[:, self.changed] = (u[:, self.changed] - shift) * torch.exp(-scale)
        return w


class ConditionalCouplingFlow(nn.Module):
    """``layers`` conditional affine couplings over ``dim`` dimensions (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        condition_features: int,
        layers: int = 8,
        hidden: int = 512,
        hidden_layers: int = 2,
        scale_bound: float = 2.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        generator = torch.Generator().manual_seed(int(seed))
        couplings = []
        for index in range(layers):
            if index % 2 == 0:
                order = torch.randperm(dim, generator=generator)
                first, second = order[: dim // 2].sort().values, order[dim // 2 :].sort().values
            kept, changed = (first, second) if index % 2 == 0 else (second, first)
            couplings.append(
                ConditionalAffineCoupling(kept, changed, condition_features, hidden, hidden_layers, scale_bound)
            )
        self.couplings = nn.ModuleList(couplings)

    def forward(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for coupling in self.couplings:
            w, layer_log_det = coupling(w, h)
            log_det = log_det + layer_log_det
        return w, log_det

    def inverse(self, u: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        for coupling in reversed(self.couplings):
            u = coupling.inverse(u, h)
        return u


class ConditionalElementwiseAffine(nn.Module):
    """u = (w - (a t + b)) * exp(-(c t + d)) per dimension for w, t (N, dim); identity at zero parameters."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(4, int(dim)))  # rows a, b, c, d
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def location_and_log_scale(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c, d = self.weights
        return a * t + b, c * t + d

    def forward(self, w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        location, log_scale = self.location_and_log_scale(t)
        return (w - location) * torch.exp(-log_scale), -log_scale.sum(dim=1)

    def inverse(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        location, log_scale = self.location_and_log_scale(t)
        return u * torch.exp(log_scale) + location

    @torch.no_grad()
    def initialise_from(self, w: torch.Tensor, t: torch.Tensor, min_scale: float = 1e-2) -> None:
        """Per dimension, the least-squares line w ~ a t + b over the batch and d = log of the residual's standard
        deviation (at least ``min_scale``); c = 0. Marks the layer initialised."""
        w, t = w.double(), t.double()
        t_centred, w_centred = t - t.mean(dim=0), w - w.mean(dim=0)
        variance = (t_centred**2).mean(dim=0)
        a = torch.where(
            variance > 1e-8, (t_centred * w_centred).mean(dim=0) / variance.clamp_min(1e-8), torch.zeros_like(variance)
        )
        b = w.mean(dim=0) - a * t.mean(dim=0)
        residual_std = (w - a * t - b).std(dim=0, unbiased=False).clamp_min(min_scale)
        self.weights.copy_(torch.stack([a, b, torch.zeros_like(a), residual_std.log()]).to(self.weights.dtype))
        self.initialised.fill_(True)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over dimensions, (N,)."""
    return -0.5 * (z**2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


__all__ = [
    "ConditionalAffineCoupling",
    "ConditionalCouplingFlow",
    "ConditionalElementwiseAffine",
    "inverse_logit_transform",
    "logit_transform",
    "standard_normal_log_density",
]
