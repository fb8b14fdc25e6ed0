"""Per-pixel reconstruction errors (MS-VAE appendix J reports L1 and L2 next to the Fréchet distance).

For images x in [0, 1] and reconstructions x_hat (Bernoulli-decoder probabilities), averaged over every pixel
(and channel) of every image:

    l1  = mean |x - x_hat|
    l2  = mean (x - x_hat)^2
    bce = mean -[x log p + (1 - x) log(1 - p)],  p = clip(x_hat, eps, 1 - eps)

The sums are accumulated in float64 so that streaming batches through ``ReconstructionErrorAccumulator`` gives the
same numbers as one call on all images at once.

On dSprites and its variants most pixels are black background, which every reconstruction gets right, so the
means above are dominated by it. The foreground error (``ForegroundErrorAccumulator``, the registered metric
``foreground_error``) averages over the object only. A pixel is foreground when, in the real image x or in the
reference y (stage one's reconstruction Y), its brightest channel exceeds a threshold t:

    F = {(i, p) : max_c x_icp > t  or  max_c y_icp > t}
    foreground l1 = sum_{(i, p) in F} sum_c |x_icp - x_hat_icp| / (C |F|)
    foreground l2 = sum_{(i, p) in F} sum_c (x_icp - x_hat_icp)^2 / (C |F|)

and ``fraction`` = |F| / (N H W), the share of pixels counted. The same mask scores Y (x_hat = y) and every X-hat
of one x, so their errors are over the same pixels. t = 0.1 sits below the darkest sprite pixel of the textured
variant (colour >= 0.5 times grating intensity >= 1 - contrast = 0.5, so >= 0.25) and above a black background;
for a variant whose background is bright (noisy, scream) nearly every pixel is foreground and the score tends
to the global one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge, Lt

__all__ = [
    "ReconstructionErrorAccumulator",
    "reconstruction_errors",
    "reconstruction_errors_from_batches",
    "ForegroundErrorAccumulator",
    "ForegroundErrorConfig",
    "foreground_error_metric",
]


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


def _as_tensor64(array: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    tensor = _as_float64(tensor)
    return tensor if device is None else tensor.to(device)


class ForegroundErrorAccumulator:
    """Streams batches of (x, x_hat, y) and keeps float64 sums of the errors of x_hat over the foreground of x or y
    (module docstring); ``result()`` returns {"l1", "l2", "fraction"}. uint8 images are divided by 255; images are
    (N, C, H, W) (or any (N, C, ...) layout: the mask is taken over axis 1)."""

    def __init__(self, threshold: float = 0.1) -> None:
        self.threshold = float(threshold)
        self.absolute_sum = 0.0
        self.squared_sum = 0.0
        self.foreground = 0
        self.pixels = 0
        self.channels = 0

    def update(
        self, x: np.ndarray | torch.Tensor, x_hat: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
    ) -> None:
        if not (tuple(x.shape) == tuple(x_hat.shape) == tuple(y.shape)) or len(x.shape) < 3:
            raise ValueError(
                f"x, x_hat and y must be (N, C, ...) of one shape, got {tuple(x.shape)}, {tuple(x_hat.shape)} "
                f"and {tuple(y.shape)}"
            )
        x = _as_tensor64(x)
        x_hat, y = _as_tensor64(x_hat, x.device), _as_tensor64(y, x.device)
        mask = (x.amax(dim=1, keepdim=True) > self.threshold) | (y.amax(dim=1, keepdim=True) > self.threshold)
        difference = (x - x_hat) * mask
        self.absolute_sum += float(difference.abs().sum())
        self.squared_sum += float(difference.square().sum())
        self.foreground += int(mask.sum())
        self.pixels += int(mask.numel())
        self.channels = int(x.shape[1])

    def result(self) -> dict[str, float]:
        """Foreground L1 and L2 per pixel and channel, and the fraction of pixels in the foreground; L1 and L2 are
        NaN when no pixel was foreground."""
        if self.pixels == 0:
            raise ValueError("no pixels were accumulated")
        values = self.foreground * self.channels
        return {
            "l1": self.absolute_sum / values if values else float("nan"),
            "l2": self.squared_sum / values if values else float("nan"),
            "fraction": self.foreground / self.pixels,
        }


@dataclass(frozen=True)
class ForegroundErrorConfig:
    """``threshold``: a pixel is foreground where the brightest channel of x or of y exceeds it (module docstring)."""

    threshold: Annotated[float, Ge(0.0), Lt(1.0)] = 0.1


def foreground_error_metric(inputs, config: ForegroundErrorConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the foreground errors of ``other_images`` against ``images`` (x) over the foreground of x
    or ``condition_images`` (y), keys ``reconstruction.<label>.foreground.{l1,l2,fraction}``. The evaluate stage
    streams the same accumulator batch by batch (``seed`` draws nothing)."""
    accumulator = ForegroundErrorAccumulator(config.threshold)
    accumulator.update(inputs.images, inputs.other_images, inputs.condition_images)
    return {f"reconstruction.{inputs.label}.foreground.{k}": v for k, v in accumulator.result().items()}
