"""Fréchet distance in the features of an in-domain factor classifier.

The Fréchet distance between two Gaussians fitted to feature sets a and b (Heusel et al. 2017, "GANs Trained by
a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. in sec. "Fréchet Inception Distance";
Dowson & Landau 1982):

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).

MS-VAE (section 4, "Measuring Reconstruction Quality") reports this distance in Inception features on natural
images. Our datasets (dSprites and friends) are far from ImageNet, so the features here come from a small
convolutional classifier trained on the dataset's own ground-truth factors (``FactorClassifier``): the distance is
*not* comparable to published Inception-feature numbers, and results are always named as a Fréchet distance in
the features of an in-domain factor classifier.

That classifier sees only what its heads ask for: trained on shape, scale, orientation and position, it has no
reason to tell a coloured, textured sprite from a grey one, so a distance in its features is blind to the detail
that stage two is for. The *detail network* is the same architecture with one more head: a regression of the
dataset's nuisance columns (colour, grating, ...; ``regression_targets``), trained together with the factor heads;
its features are the space of the detail-aware Fréchet distance (``frechet.detail_classifier.*``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import scipy.linalg
import torch
from annotated_types import Gt
from torch import nn
from torch.nn import functional

__all__ = [
    "gaussian_statistics",
    "frechet_distance_from_statistics",
    "frechet_distance",
    "FactorClassifier",
    "train_factor_classifier",
    "extract_features",
    "factor_accuracies",
    "regression_r2",
    "DetailFrechetConfig",
    "detail_frechet_metric",
]


# --------------------------------------------------------------------------------------------------------------
# The distance
# --------------------------------------------------------------------------------------------------------------


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of a feature set (N, F), in float64 (N >= 2)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance_from_statistics(
    mean_a: np.ndarray,
    covariance_a: np.ndarray,
    mean_b: np.ndarray,
    covariance_b: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) (Heusel et al. 2017).

    ``scipy.linalg.sqrtm`` computes the matrix square root. As in the reference implementations (TTUR,
    pytorch-fid): when the product is singular and the square root is not finite or inaccurate, eps * I is added
    to both covariances; a negligible imaginary part from round-off is dropped (a large one raises ValueError).
    Round-off can make the result a tiny negative number for identical statistics; it is clipped at 0.
    """
    mean_a = np.atleast_1d(np.asarray(mean_a, dtype=np.float64))
    mean_b = np.atleast_1d(np.asarray(mean_b, dtype=np.float64))
    covariance_a = np.atleast_2d(np.asarray(covariance_a, dtype=np.float64))
    covariance_b = np.atleast_2d(np.asarray(covariance_b, dtype=np.float64))
    if mean_a.shape != mean_b.shape or covariance_a.shape != covariance_b.shape:
        raise ValueError("the two feature sets have different dimensions")
    if covariance_a.shape != (mean_a.size, mean_a.size):
        raise ValueError(f"covariance shape {covariance_a.shape} does not match mean size {mean_a.size}")

    difference = mean_a - mean_b
    product = covariance_a @ covariance_b
    covariance_mean = scipy.linalg.sqrtm(product)
    scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    inaccurate = not np.all(np.isfinite(covariance_mean)) or (
        np.linalg.norm(covariance_mean @ covariance_mean - product) / scale > 1e-3
    )
    if inaccurate:
        offset = np.eye(mean_a.size) * eps
        covariance_mean = scipy.linalg.sqrtm((covariance_a + offset) @ (covariance_b + offset))
    if np.iscomplexobj(covariance_mean):
        imaginary = np.abs(np.diagonal(covariance_mean).imag).max()
        if imaginary > 1e-3 * max(1.0, np.abs(np.diagonal(covariance_mean).real).max()):
            raise ValueError(f"sqrtm(S_a S_b) has a large imaginary component {imaginary:.3g}")
        covariance_mean = covariance_mean.real
    distance = (
        difference @ difference + np.trace(covariance_a) + np.trace(covariance_b) - 2.0 * np.trace(covariance_mean)
    )
    return float(max(distance, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) (Heusel et al. 2017), means and unbiased covariances of
    the rows. With features from ``extract_features`` this is the Fréchet distance in the features of an
    in-domain factor classifier.
    """
    mean_a, covariance_a = gaussian_statistics(features_a)
    mean_b, covariance_b = gaussian_statistics(features_b)
    return frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b, eps=eps)


# --------------------------------------------------------------------------------------------------------------
# The in-domain feature extractor
# --------------------------------------------------------------------------------------------------------------


def _as_float_images(batch: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (/255); float images (probabilities in [0, 1]) are kept as they are."""
    tensor = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    if tensor.dtype == torch.uint8:
        return tensor.to(device).float().div_(255.0)
    if not tensor.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.float32)


class FactorClassifier(nn.Module):
    """A small conv net with one linear head per ground-truth factor (and, with ``regression_outputs`` > 0, one
    linear regression head of that many outputs, see ``regress``); its 128-d penultimate layer is the feature space
    of the Fréchet distance.

    Body: 4 conv layers (4x4, stride 2, padding 1; 32, 32, 64, 64 channels, ReLU), adaptive average pooling to
    4x4 (so 64x64 and 32x32 images share the architecture and absolute position survives, which the position
    factors need), then a linear layer to ``feature_dim`` with an ELU (smooth and never exactly constant, so a
    dead unit does not make the feature covariance singular). Heads: one ``nn.Linear(feature_dim, size_k)`` per
    factor. Images must be at least 16 x 16.
    """

    def __init__(
        self,
        in_channels: int,
        factor_sizes: Sequence[int],
        factor_names: Sequence[str] | None = None,
        feature_dim: int = 128,
        regression_outputs: int = 0,
    ) -> None:
        super().__init__()
        factor_sizes = tuple(int(size) for size in factor_sizes)
        if factor_names is None:
            factor_names = tuple(f"factor{k}" for k in range(len(factor_sizes)))
        factor_names = tuple(factor_names)
        if len(factor_names) != len(factor_sizes):
            raise ValueError(f"{len(factor_names)} factor names for {len(factor_sizes)} factor sizes")
        self.config = {
            "in_channels": int(in_channels),
            "factor_sizes": factor_sizes,
            "factor_names": factor_names,
            "feature_dim": int(feature_dim),
            "regression_outputs": int(regression_outputs),
        }
        self.factor_names = factor_names
        self.factor_sizes = factor_sizes
        channels = [int(in_channels), 32, 32, 64, 64]
        layers: list[nn.Module] = []
        for in_c, out_c in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(in_c, out_c, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 4 * 4, feature_dim), nn.ELU()]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(feature_dim, size) for size in factor_sizes)
        self.regression = nn.Linear(feature_dim, regression_outputs) if regression_outputs > 0 else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, feature_dim) penultimate features."""
        if images.shape[-1] < 16 or images.shape[-2] < 16:
            raise ValueError(f"FactorClassifier needs images of at least 16 x 16, got {tuple(images.shape)}")
        return self.body(images)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) float in [0, 1] -> list of K logit tensors (B, size_k)."""
        features = self.features(images)
        return [head(features) for head in self.heads]

    def regress(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, regression_outputs) standardised regression outputs."""
        if self.regression is None:
            raise ValueError("this classifier was built without regression outputs")
        return self.regression(self.features(images))


def _device_rng_scope(device: torch.device):
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda_devices)


def factor_accuracies(
    classifier: FactorClassifier,
    images: np.ndarray,
    factor_classes: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Per-factor accuracy of ``classifier`` on the given images: {"<factor>": acc, ..., "mean": mean}."""
    device = torch.device(device)
    factor_classes = np.asarray(factor_classes)
    correct = np.zeros(len(classifier.factor_names), dtype=np.int64)
    was_training = classifier.training
    classifier.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = _as_float_images(images[start : start + batch_size], device)
            targets = torch.from_numpy(np.asarray(factor_classes[start : start + batch_size], dtype=np.int64))
            for k, logits in enumerate(classifier(batch)):
                correct[k] += int((logits.argmax(dim=1).cpu() == targets[:, k]).sum())
    classifier.train(was_training)
    accuracies = {name: float(correct[k] / len(images)) for k, name in enumerate(classifier.factor_names)}
    accuracies["mean"] = float(np.mean(list(accuracies.values())))
    return accuracies


def regression_r2(
    classifier: FactorClassifier,
    images: np.ndarray,
    targets: np.ndarray,
    names: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """R^2 = 1 - SSE / SST of each standardised regression output of ``classifier`` on the given images, against
    ``targets`` (N, R) already standardised as in training: {"<name>": r2, ...}."""
    device = torch.device(device)
    was_training = classifier.training
    classifier.eval()
    with torch.no_grad():
        predicted = np.concatenate(
            [
                classifier.regress(_as_float_images(images[start : start + batch_size], device)).double().cpu().numpy()
                for start in range(0, len(images), batch_size)
            ]
        )
    classifier.train(was_training)
    truth = np.asarray(targets, dtype=np.float64)
    total = np.maximum(np.square(truth - truth.mean(axis=0)).sum(axis=0), np.finfo(np.float64).tiny)
    r2 = 1.0 - np.square(truth - predicted).sum(axis=0) / total
    return {name: float(value) for name, value in zip(names, r2)}


def train_factor_classifier(
    images: np.ndarray,
    factor_classes: np.ndarray,
    factor_sizes: Sequence[int],
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
    factor_names: Sequence[str] | None = None,
    learning_rate: float = 1e-3,
    heldout_fraction: float = 0.1,
    progress_every: int = 50,
    regression_targets: np.ndarray | None = None,
    regression_names: Sequence[str] | None = None,
) -> tuple[FactorClassifier, dict[str, float]]:
    """Train a ``FactorClassifier`` to predict every factor, on (1 - heldout_fraction) of the images.

    Loss: the sum over factors of the cross-entropy of each head, plus, with ``regression_targets`` (N, R) float
    (the detail network), the sum over the R outputs of the mean squared error of the regression head against the
    targets standardised by their mean and standard deviation on the training part. Adam, ``steps`` minibatches
    of ``batch_size``
    drawn uniformly (with replacement) from the training part. Deterministic from ``seed``: the split and the
    batches come from ``np.random.default_rng(seed)``, the weights from ``torch.manual_seed(seed)`` inside a
    forked RNG scope (the caller's global torch RNG state is left untouched).

    Args:
        images: uint8 (N, C, H, W) (a memmap is fine: batches are read with sorted indices).
        factor_classes: int (N, K) class indices; factor_sizes: the K class counts.
        progress: optional callback ``progress(step, {"loss": float})`` every ``progress_every`` steps and at
            the last step.
        factor_names: names for the heads and the accuracy keys (default factor0..factorK-1).
        regression_names: the R outputs' names (default output0..), keys ``r2.<name>`` of the result.
    Returns (classifier in eval mode, {"<factor>": held-out accuracy, ..., "mean": mean over factors} and, with
    regression targets, {"r2.<name>": held-out R^2 of each standardised output}).
    """
    device = torch.device(device)
    factor_classes = np.asarray(factor_classes)
    num_images = len(images)
    if factor_classes.shape != (num_images, len(factor_sizes)):
        raise ValueError(
            f"factor_classes shape {factor_classes.shape} does not match {num_images} images and "
            f"{len(factor_sizes)} factor sizes"
        )
    if num_images < 2:
        raise ValueError("need at least 2 images (one to train on, one held out)")
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(num_images)
    num_heldout = min(max(1, int(round(heldout_fraction * num_images))), num_images - 1)
    heldout_indices = np.sort(permutation[:num_heldout])
    train_indices = np.sort(permutation[num_heldout:])
    standardised = None
    if regression_targets is not None:
        targets = np.asarray(regression_targets, dtype=np.float64)
        if targets.ndim != 2 or len(targets) != num_images or not np.all(np.isfinite(targets)):
            raise ValueError(f"regression_targets must be finite (N={num_images}, R), got shape {targets.shape}")
        mean, std = targets[train_indices].mean(axis=0), targets[train_indices].std(axis=0)
        standardised = (targets - mean) / np.where(std > 0, std, 1.0)
        regression_names = tuple(regression_names or (f"output{j}" for j in range(targets.shape[1])))
    outputs = 0 if standardised is None else standardised.shape[1]

    with _device_rng_scope(device):
        torch.manual_seed(seed)
        classifier = FactorClassifier(images.shape[1], factor_sizes, factor_names, regression_outputs=outputs)
        classifier = classifier.to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
        classifier.train()
        for step in range(1, int(steps) + 1):
            batch_indices = np.sort(train_indices[rng.integers(0, len(train_indices), size=batch_size)])
            batch = _as_float_images(images[batch_indices], device)
            targets = torch.from_numpy(np.asarray(factor_classes[batch_indices], dtype=np.int64)).to(device)
            features = classifier.features(batch)
            loss = sum(
                functional.cross_entropy(head(features), targets[:, k]) for k, head in enumerate(classifier.heads)
            )
            if standardised is not None:
                wanted = torch.from_numpy(standardised[batch_indices]).to(device=device, dtype=torch.float32)
                loss = loss + functional.mse_loss(classifier.regression(features), wanted) * outputs
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None and (step % progress_every == 0 or step == steps):
                progress(step, {"loss": float(loss.detach())})
    classifier.eval()
    heldout_images = images[heldout_indices]
    accuracies = factor_accuracies(classifier, heldout_images, factor_classes[heldout_indices], batch_size, device)
    if standardised is not None:
        r2 = regression_r2(
            classifier, heldout_images, standardised[heldout_indices], regression_names, batch_size, device
        )
        accuracies |= {f"r2.{name}": value for name, value in r2.items()}
    return classifier, accuracies


def extract_features(
    classifier: FactorClassifier,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Penultimate-layer features (N, feature_dim) float64 of ``classifier`` for N images, in batches.

    ``images``: uint8 (N, C, H, W) (divided by 255) or floating point arrays / tensors of probabilities in [0, 1]
    (used as they are), numpy, memmap or torch (any device).
    """
    device = torch.device(device)
    was_training = classifier.training
    classifier.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = _as_float_images(images[start : start + batch_size], device)
            chunks.append(classifier.features(batch).double().cpu().numpy())
    classifier.train(was_training)
    if not chunks:
        return np.zeros((0, classifier.config["feature_dim"]), dtype=np.float64)
    return np.concatenate(chunks, axis=0)


@dataclass(frozen=True)
class DetailFrechetConfig:
    """The detail network behind ``frechet.detail_classifier.*``: ``steps`` Adam steps of ``batch_size`` images
    drawn from ``train_images`` rows of the training split (chosen by ``seed``, which also fixes the weights)."""

    steps: Annotated[int, Gt(0)] = 1000
    batch_size: Annotated[int, Gt(1)] = 64
    train_images: Annotated[int, Gt(10)] = 20000
    seed: int = 0


def detail_frechet_metric(inputs, config: DetailFrechetConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the Fréchet distance between ``features`` and ``other_features`` (the detail network's,
    which the evaluate stage extracts), key ``frechet.detail_classifier.<label>``. ``config`` shapes the network,
    not the distance; ``seed`` draws nothing."""
    return {f"frechet.detail_classifier.{inputs.label}": frechet_distance(inputs.features, inputs.other_features)}
