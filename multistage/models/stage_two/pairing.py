"""The paired training set of MS-VAE stage two (MS-VAE appendix I):

    x_i ~ p(x),   c ~ q_phi(c|x_i)   (or its representation),   y_i = E_y[p_theta(y|c)] = model.decode_mean(c),

with ``samples_per_x`` draws of c (hence of y) per x_i; appendix I uses 10 for celebA, where one x has very
different y's, and 1 for the quantitative experiments.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from multistage.models.stage_one.base import StageOneModel

NOISE_BLOCK_ROWS = 65536  # noise is drawn in fixed blocks of output rows, so it does not depend on batch_size


class _UniformTable:
    """An endless (rows, width) table of uniforms in [0, 1) determined by ``seed`` alone, generated block by block
    (float64, so that the model's inverse CDFs see no ties at 0)."""

    def __init__(self, width: int, seed: int) -> None:
        self.width, self.seed = int(width), int(seed)
        self._block, self._table = -1, np.empty((0, self.width), np.float32)

    def rows(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.width), dtype=np.float64)
        row = start
        while row < stop:
            block, offset = divmod(row, NOISE_BLOCK_ROWS)
            if block != self._block:
                generator = np.random.default_rng([self.seed, block])
                self._block = block
                self._table = generator.random((NOISE_BLOCK_ROWS, self.width))
            take = min(stop - row, NOISE_BLOCK_ROWS - offset)
            out[row - start : row - start + take] = self._table[offset : offset + take]
            row += take
        return out


def make_pairs(
    model: StageOneModel,
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
    Returns dict(x_index int64 (M,), c float32 (M, code_dim), y float16 (M, C, H, W) probabilities), M =
    len(indices) * samples_per_x; the samples of one x are consecutive rows (x_index = np.repeat(indices,
    samples_per_x)). c ~ q(c|x) (``model.code_from_uniforms`` on a uniform table), or ``model.representation``
    (the posterior mean / argmax) when ``use_mean`` (then the copies are identical); y = ``model.decode_mean(c)``.
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
    total = len(indices) * samples_per_x
    x_index = np.repeat(indices, samples_per_x)
    codes = np.empty((total, model.code_dim), dtype=np.float32)
    probabilities = np.empty((total, *images.shape[1:]), dtype=np.float16)
    noise_table = _UniformTable(model.noise_width, seed)
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
                posterior = model.posterior(x)
                first, last = start * samples_per_x, (start + len(rows)) * samples_per_x
                if use_mean:
                    c = model.representation_from_posterior(posterior).repeat_interleave(samples_per_x, dim=0)
                else:
                    posterior = {k: v.repeat_interleave(samples_per_x, dim=0) for k, v in posterior.items()}
                    uniforms = torch.from_numpy(noise_table.rows(first, last)).to(device)
                    c = model.code_from_uniforms(posterior, uniforms)
                y = model.decode_mean(c)
                codes[first:last] = c.float().cpu().numpy()
                probabilities[first:last] = y.to(torch.float16).cpu().numpy()
                if progress is not None:
                    progress(last, total)
    finally:
        model.train(was_training)
    return {"x_index": x_index, "c": codes, "y": probabilities}
