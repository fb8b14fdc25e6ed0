"""Per-pixel reconstruction errors (MS-VAE appendix J reports L1 and L2 next to the Fréchet distance).

For images x in [0, 1] and reconstructions x_hat (Bernoulli-decoder probabilities), averaged over every pixel
(and channel) of every image:

    l1  = mean |x - x_hat|
    l2  = mean (x - x_hat)^2
    bce = mean -[x log p + (1 - x) log(1 - p)],  p = clip(x_hat, eps, 1 - eps)

The sums are accumulated in float64 so that streaming batches through ``ReconstructionErrorAccumulator`` gives the
same numbers as one call on all images at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["ReconstructionErrorAccumulator", "reconstruction_errors", "reconstruction_errors_from_batches"]


def _as_float64(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 -> /255; everything else -> float64, staying numpy or torch (and on its device)."""
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.uint8:
            return array.double() / 255.0
        return array.double()
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64, copy=False)


class ReconstructionErrorAccumulator:
    """Streams batches of (x, x_hat) and keeps float64 sums of the per-pixel errors.

    ``update(x, x_hat)`` accepts numpy arrays or torch tensors (uint8 images are divided by 255; torch stays on
    its device until the three sums are reduced); ``result()`` returns {"l1", "l2", "bce"} per pixel.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = float(eps)
        self.absolute_sum = 0.0
        self.squared_sum = 0.0
        self.cross_entropy_sum = 0.0
        self.count = 0

    def update(self, x: np.ndarray | torch.Tensor, x_hat: np.ndarray | torch.Tensor) -> None:
        if tuple(x.shape) != tuple(x_hat.shape):
            raise ValueError(f"x has shape {tuple(x.shape)} but x_hat has shape {tuple(x_hat.shape)}")
        if isinstance(x, torch.Tensor) or isinstance(x_hat, torch.Tensor):
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            x_hat = x_hat if isinstance(x_hat, torch.Tensor) else torch.from_numpy(np.asarray(x_hat))
            x, x_hat = _as_float64(x), _as_float64(x_hat).to(x.device)
            x = x.to(x_hat.device)
            difference = x - x_hat
            probability = x_hat.clamp(self.eps, 1.0 - self.eps)
            cross_entropy = -(x * probability.log() + (1.0 - x) * (1.0 - probability).log())
            self.absolute_sum += float(difference.abs().sum())
            self.squared_sum += float(difference.square().sum())
            self.cross_entropy_sum += float(cross_entropy.sum())
        else:
            x, x_hat = _as_float64(x), _as_float64(x_hat)
            difference = x - x_hat
            probability = np.clip(x_hat, self.eps, 1.0 - self.eps)
            cross_entropy = -(x * np.log(probability) + (1.0 - x) * np.log1p(-probability))
            self.absolute_sum += float(np.abs(difference).sum())
            self.squared_sum += float(np.square(difference).sum())
            self.cross_entropy_sum += float(cross_entropy.sum())
        self.count += int(np.prod(tuple(x.shape)))

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no pixels were accumulated")
        return {
            "l1": self.absolute_sum / self.count,
            "l2": self.squared_sum / self.count,
            "bce": self.cross_entropy_sum / self.count,
        }


def reconstruction_errors(
    x: np.ndarray | torch.Tensor, x_hat: np.ndarray | torch.Tensor, eps: float = 1e-6
) -> dict[str, float]:
    """{"l1": mean |x - x_hat|, "l2": mean (x - x_hat)^2, "bce": mean binary cross-entropy} per pixel, for one
    batch (numpy or torch, any shape; x in [0, 1] or uint8, x_hat probabilities)."""
    accumulator = ReconstructionErrorAccumulator(eps)
    accumulator.update(x, x_hat)
    return accumulator.result()


def reconstruction_errors_from_batches(
    batches: Iterable[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]], eps: float = 1e-6
) -> dict[str, float]:
    """The same per-pixel errors over an iterable of (x, x_hat) batches, never holding more than one batch."""
    accumulator = ReconstructionErrorAccumulator(eps)
    for x, x_hat in batches:
        accumulator.update(x, x_hat)
    return accumulator.result()
