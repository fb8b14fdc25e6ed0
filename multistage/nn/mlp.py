"""Fully connected encoders and decoders over flattened inputs of any shape: images (C, H, W) or series (C, T).

* The beta-TCVAE paper's dSprites networks (Chen et al. 2018, appendix H.1): encoder 4096 -> 1200 -> 1200 -> out
  with ReLU; decoder latent -> 1200 -> 1200 -> 1200 -> 4096 with tanh. Here the input size is whatever the data
  shape gives (``prod(input_shape)``), so the same networks run on 32x32 or colour images.
* An MLP for 1-d series, e.g. the pendulum of MS-VAE appendix C (float32 N x C x T; the paper itself models the
  series "as a fixed length, 1D vector"): encoder and decoder with ReLU hidden layers of 256 units.

The decoder returns the raw output in the input's shape (Bernoulli logits or a Gaussian mean; the likelihood
decides what it means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _stack(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, ``activation`` after every one but the last."""
    layers: list[nn.Module] = []
    for index, (previous, current) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(previous, current))
        if index < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Inputs (B, *input_shape) -> features (B, out_features) through ``hidden`` fully connected layers."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        hidden: Sequence[int] = (1200, 1200),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.network = _stack([math.prod(self.input_shape), *hidden, int(out_features)], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"MLPEncoder expects inputs (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        return self.network(x.reshape(x.shape[0], -1))


class MLPDecoder(nn.Module):
    """Codes (B, latent_dim) -> raw outputs (B, *output_shape) through ``hidden`` fully connected layers."""

    def __init__(
        self,
        latent_dim: int,
        output_shape: Sequence[int],
        hidden: Sequence[int] = (1200, 1200, 1200),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.output_shape = tuple(int(s) for s in output_shape)
        self.network = _stack([int(latent_dim), *hidden, math.prod(self.output_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.network(z).reshape(z.shape[0], *self.output_shape)
