"""The paired training set of MS-VAE stage two (MS-VAE appendix I):

    x_i ~ p(x),   c ~ q_phi(c|x_i)   (or its mean),   y_i = E_y[p_theta(y|c)] = sigmoid(decoder logits),

with ``samples_per_x`` draws of c (hence of y) per x_i; appendix I uses 10 for celebA, where one x has very
different y's, and 1 for the quantitative experiments.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from multistage.models.stage_one.betatcvae import BetaTCVAE

NOISE_BLOCK_ROWS = 65536  # noise is drawn in fixed blocks of output rows, so it does not depend on batch_size


class _StandardNormalTable:
    """An endless (rows, width) standard-normal table determined by ``seed`` alone, generated block by block."""

    def __init__(self, width: int, seed: int) -> None:
        self.width, self.seed = int(width), int(seed)
        self._block, self._table = -1, np.empty((0, self.width), np.float32)

    def rows(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.width), dtype=np.float32)
        row = start
        while row < stop:
            block, offset = divmod(row, NOISE_BLOCK_ROWS)
            if block != self._block:
                generator = np.random.default_rng([self.seed, block])
                self._block = block
                self._table = generator.standard_normal((NOISE_BLOCK_ROWS, self.width), np.float32)
            take = min(stop - row, NOISE_BLOCK_ROWS - offset)
            out[row - start : row - start + take] = self._table[offset : offset + take]
            row += take
        return out


def make_pairs(
    model: BetaTCVAE,
    images: np.ndarray,
    indices: np.ndarray | None = None,
    samples_per_x: int = 1,
    use_mean: bool = False,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Pairs (x, y) for stage two from a trained stage-one model.

    images: uint8 (N, C, H, W) (a memmap is fine); indices: the rows to pair (default all), in the given order.
    Returns dict(x_index int64 (M,), c float32 (M, L), y float16 (M, C, H, W) probabilities), M = len(indices) *
    samples_per_x; the samples of one x are consecutive rows (x_index = np.repeat(indices, samples_per_x)).
    c ~ q(c|x) by reparameterisation, or the posterior mean when ``use_mean`` (then the copies are identical).
    Deterministic from ``seed`` (the noise depends on seed and row only, not on batch_size or device). Runs under
    torch.no_grad() in eval mode (the model's mode is restored), batch_size images at a time, and calls
    ``progress(done, total)`` in output rows after each batch.
    """
    if samples_per_x < 1:
        raise ValueError(f"samples_per_x must be >= 1, got {samples_per_x}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = np.arange(len(images), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1:
        raise ValueError("indices must be a 1-d array of image rows")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    latent_dim = model.config.latent_dim
    total = len(indices) * samples_per_x
    x_index = np.repeat(indices, samples_per_x)
    codes = np.empty((total, latent_dim), dtype=np.float32)
    probabilities = np.empty((total, *images.shape[1:]), dtype=np.float16)
    noise_table = _StandardNormalTable(latent_dim, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                rows = indices[start : start + batch_size]
                # sorted reads are faster on a memmap; put the images back in the requested order afterwards
                order = np.argsort(rows, kind="stable")
                batch = np.empty((len(rows), *images.shape[1:]), dtype=images.dtype)
                batch[order] = images[rows[order]]
                x = torch.from_numpy(batch).to(device)
                mu, logvar = model.encode(x)
                mu = mu.repeat_interleave(samples_per_x, dim=0)
                first, last = start * samples_per_x, (start + len(rows)) * samples_per_x
                if use_mean:
                    c = mu
                else:
                    noise = torch.from_numpy(noise_table.rows(first, last)).to(device)
                    c = mu + torch.exp(0.5 * logvar.repeat_interleave(samples_per_x, dim=0)) * noise
                y = torch.sigmoid(model.decode(c))
                codes[first:last] = c.float().cpu().numpy()
                probabilities[first:last] = y.to(torch.float16).cpu().numpy()
                if progress is not None:
                    progress(last, total)
    finally:
        model.train(was_training)
    return {"x_index": x_index, "c": codes, "y": probabilities}
