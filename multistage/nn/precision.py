"""Mixed precision for training: a network's forward in bfloat16 under autocast, everything else in float32.

``runtime.precision`` (params.yaml) picks it: ``fp32``, ``bf16``, or ``auto`` (bf16 where the hardware computes it
natively — a CUDA device with bf16 support, or a CPU with AVX512-BF16 / AMX that oneDNN uses — else fp32).

What runs in bf16: only the forward (and so the backward) of the networks handed to `train_networks_in_bf16`,
and only while they are in training mode; their outputs are cast back to float32 at the boundary. So the weights,
Adam's state, the likelihood, the KL terms and the minibatch estimators stay float32, and evaluation
(``model.eval()``: codes, reconstructions, metrics) is computed in float32. This is the standard autocast recipe
(PyTorch AMP); bf16 keeps float32's exponent range, so no loss scaling is needed. What it gains on this project's
CPU, measured: docs/studies/training-speed.md.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (so autocast to bf16 is a speed-up)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where native on ``device``, else ``fp32``; ``fp32`` / ``bf16`` as given."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    return requested


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    return value


def train_networks_in_bf16(device: torch.device, *networks: nn.Module) -> None:
    """Make each network's forward run under bf16 autocast while it is in training mode (outputs cast back to
    float32). The parameters and the state_dict are untouched: a model file written after training is the same
    float32 file, and loading it gives a float32 network."""
    for network in networks:
        if getattr(network, "_bf16_training", False):
            continue
        forward = network.forward

        @functools.wraps(forward)
        def wrapped(*args, _forward=forward, _network=network, **kwargs):
            if not _network.training:
                return _forward(*args, **kwargs)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                out = _forward(*args, **kwargs)
            return _to_float32(out)

        network.forward = wrapped
        network._bf16_training = True
