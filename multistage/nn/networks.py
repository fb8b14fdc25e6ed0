"""The encoder/decoder pairs a stage-one model can be built with, chosen by name.

| name         | networks                                                               | input            |
| ------------ | ---------------------------------------------------------------------- | ---------------- |
| ``conv64``   | Burgess et al. (2018) / disentanglement_lib convolutions (``conv.py``) | (C, 64, 64)      |
| ``conv32``   | the same four convolutions on 32x32 images (2x2 bottleneck)            | (C, 32, 32)      |
| ``pooled64`` | conv32 behind a 2x2 average pool; its logits upsampled 2x (bilinear)   | (C, 64, 64)      |
| ``mlp``      | beta-TCVAE appendix H.1: 1200-1200 ReLU encoder, 1200x3 tanh decoder   | any (C, H, W)    |
| ``series_mlp`` | 256-256 ReLU encoder and decoder for 1-d series (the pendulum)       | (C, T)           |

``auto`` picks conv64 / conv32 for 64x64 / 32x32 images and series_mlp for series.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from multistage.nn.conv import ConvDecoder, ConvEncoder, PooledConvEncoder, UpsampledConvDecoder
from multistage.nn.mlp import MLPDecoder, MLPEncoder

ARCHITECTURES = ("auto", "conv64", "conv32", "pooled64", "mlp", "series_mlp")
SERIES_HIDDEN = (256, 256)


def resolve_architecture(architecture: str, input_shape: Sequence[int]) -> str:
    """The concrete architecture for ``input_shape`` ((C, H, W) images or (C, T) series); a ValueError saying
    what fits when the two do not go together."""
    shape = tuple(int(s) for s in input_shape)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    is_series = len(shape) == 2
    if architecture == "auto":
        if is_series:
            return "series_mlp"
        if shape[1:] in ((64, 64), (32, 32)):
            return f"conv{shape[1]}"
        return "mlp"
    if architecture in ("conv64", "conv32", "pooled64"):
        size = int(architecture[-2:])
        if is_series or shape[1:] != (size, size):
            raise ValueError(
                f"architecture {architecture!r} needs ({size}, {size}) images, the data is "
                f"{'a series ' if is_series else ''}{shape}; use 'auto'"
            )
    if architecture == "series_mlp" and not is_series:
        raise ValueError(f"architecture 'series_mlp' needs (C, T) series, the data is {shape}; use 'auto'")
    if architecture == "mlp" and is_series:
        raise ValueError(f"architecture 'mlp' is the image MLP; the data is a series {shape}: use 'series_mlp'")
    return architecture


def build_encoder(architecture: str, input_shape: Sequence[int], out_features: int) -> nn.Module:
    """Encoder (B, *input_shape) -> (B, out_features)."""
    name = resolve_architecture(architecture, input_shape)
    if name == "pooled64":
        return PooledConvEncoder(int(input_shape[0]), out_features)
    if name.startswith("conv"):
        return ConvEncoder(int(input_shape[0]), int(name[4:]), out_features)
    if name == "series_mlp":
        return MLPEncoder(input_shape, out_features, hidden=SERIES_HIDDEN, activation="relu")
    return MLPEncoder(input_shape, out_features)


def build_decoder(architecture: str, in_features: int, output_shape: Sequence[int]) -> nn.Module:
    """Decoder (B, in_features) -> raw outputs (B, *output_shape)."""
    name = resolve_architecture(architecture, output_shape)
    if name == "pooled64":
        return UpsampledConvDecoder(in_features, int(output_shape[0]))
    if name.startswith("conv"):
        return ConvDecoder(in_features, int(output_shape[0]), int(name[4:]))
    if name == "series_mlp":
        return MLPDecoder(in_features, output_shape, hidden=SERIES_HIDDEN, activation="relu")
    return MLPDecoder(in_features, output_shape)
