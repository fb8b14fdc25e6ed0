"""The standard convolutional encoder and decoder of disentanglement_lib (Locatello et al., 2018), after
Burgess et al. (2018), "Understanding disentangling in beta-VAE", which MS-VAE sec. 3.2 uses for stage one.

Encoder: 4 convolutions 4x4, stride 2, padding 1, with 32, 32, 64, 64 channels and ReLU (64x64 -> 4x4, or
32x32 -> 2x2), flatten, fully connected 256, ReLU, fully connected ``out_features`` (for a Gaussian posterior
``out_features = 2 * latent_dim``: the means, then the log-variances).
Decoder: the mirror image — fully connected 256, ReLU, fully connected 64*s*s (s = 4 or 2), ReLU, 4 transposed
convolutions 4x4, stride 2, padding 1, with 64, 32, 32, ``out_channels`` channels; it returns Bernoulli *logits*.
Both take ``channels`` (the four encoder widths, mirrored by the decoder) and ``hidden_features`` (the 256) as
options, so a wider network of the same shape can be built (the Big-VAE baseline of MS-VAE sec. 4).

Memory format: both networks accept contiguous (NCHW) and channels_last inputs and give the same numbers. When
the module itself has been converted with ``module.to(memory_format=torch.channels_last)`` (faster on many
GPUs), inputs are converted to channels_last on entry, so callers never have to think about the layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_IMAGE_SIZES = (32, 64)
ENCODER_CHANNELS = (32, 32, 64, 64)
HIDDEN_FEATURES = 256


def check_image_size(image_size: int) -> int:
    """``image_size`` if the conv networks support it, else a ValueError naming the allowed sizes."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES}, got {image_size!r}")
    return int(image_size)


def match_memory_format(x: torch.Tensor, reference_weight: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last when the module's 4-d ``reference_weight`` is channels_last, else unchanged."""
    if (
        x.dim() == 4
        and reference_weight.is_contiguous(memory_format=torch.channels_last)
        and not (reference_weight.is_contiguous())
    ):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ConvEncoder(nn.Module):
    """Images (B, in_channels, S, S), S in {64, 32}, -> features (B, out_features)."""

    def __init__(
        self,
        in_channels: int,
        image_size: int = 64,
        out_features: int = 20,
        channels: tuple[int, ...] = ENCODER_CHANNELS,
        hidden_features: int = HIDDEN_FEATURES,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.in_channels = int(in_channels)
        layers: list[nn.Module] = []
        previous = self.in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1), nn.ReLU(inplace=True)]
            previous = width
        self.convolutions = nn.Sequential(*layers)
        self.final_spatial = self.image_size // 2 ** len(channels)
        self.fully_connected = nn.Sequential(
            nn.Linear(previous * self.final_spatial**2, hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"ConvEncoder expects (B, {self.in_channels}, {self.image_size}, {self.image_size}) images, "
                f"got {tuple(x.shape)}"
            )
        # the second convolution's weight is the reference: a 1-channel first weight is both layouts at once
        h = self.convolutions(match_memory_format(x, self.convolutions[2].weight))
        # reshape (not view): a channels_last activation is flattened in logical (C, H, W) order either way
        return self.fully_connected(h.reshape(h.shape[0], -1))


class ConvDecoder(nn.Module):
    """Latents (B, latent_dim) -> Bernoulli logits (B, out_channels, S, S), S in {64, 32}."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int = 1,
        image_size: int = 64,
        channels: tuple[int, ...] = ENCODER_CHANNELS,
        hidden_features: int = HIDDEN_FEATURES,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.latent_dim = int(latent_dim)
        self.first_spatial = self.image_size // 2 ** len(channels)
        self.first_channels = channels[-1]
        self.fully_connected = nn.Sequential(
            nn.Linear(self.latent_dim, hidden_features),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, self.first_channels * self.first_spatial**2),
            nn.ReLU(inplace=True),
        )
        mirrored = (*reversed(channels[:-1]), out_channels)  # 64 -> 64 -> 32 -> 32 -> out
        layers: list[nn.Module] = []
        previous = self.first_channels
        for index, channels in enumerate(mirrored):
            layers.append(nn.ConvTranspose2d(previous, channels, kernel_size=4, stride=2, padding=1))
            if index < len(mirrored) - 1:
                layers.append(nn.ReLU(inplace=True))
            previous = channels
        self.transposed_convolutions = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fully_connected(z).reshape(-1, self.first_channels, self.first_spatial, self.first_spatial)
        h = match_memory_format(h, self.transposed_convolutions[0].weight)
        return self.transposed_convolutions(h)


class PooledConvEncoder(nn.Module):
    """64x64 images -> features through a 2x2 average pool and the 32x32 encoder (the ``pooled64`` network).

    Not from a paper: a CPU-budget choice, measured in the dSprites benchmark study. It reads a 64 px image at
    the cost of the 32 px network (about a quarter of conv64's convolution work), so a fixed CPU budget buys
    about three times the steps. The pool is linear, so a binary 64 px sprite becomes a 32 px image with
    fractional edge pixels: position and scale stay readable below the 32 px grid.
    """

    def __init__(self, in_channels: int, out_features: int = 20) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.image_size = 64
        self.pool = nn.AvgPool2d(2)
        self.network = ConvEncoder(in_channels, 32, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, 64, 64):
            raise ValueError(f"PooledConvEncoder expects (B, {self.in_channels}, 64, 64) images, got {tuple(x.shape)}")
        return self.network(self.pool(x))


class UpsampledConvDecoder(nn.Module):
    """Latents -> 64x64 logits: the 32x32 decoder, its logits upsampled 2x bilinearly (the ``pooled64`` network).

    The likelihood is still evaluated on every 64 px pixel; bilinear (not nearest) interpolation of the logits
    lets an edge fall between two 32 px cells, so the decoder is not forced onto the coarser grid.
    """

    def __init__(self, latent_dim: int, out_channels: int = 1) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.image_size = 64
        self.network = ConvDecoder(latent_dim, out_channels, 32)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.network(z), scale_factor=2, mode="bilinear", align_corners=False)
