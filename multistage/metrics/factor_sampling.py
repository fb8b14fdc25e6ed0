"""Draw images that share the value of one factor, from a stored set of images with known factors.

The Z-diff (beta-VAE) metric and the FactorVAE score need groups of observations with one factor fixed and the
others random. disentanglement_lib draws them from the generative process; on a stored data set whose factors are
independent (the full dSprites grid, or a uniform subset of it) the same distribution is had by drawing stored
images: pick a value v of factor k (from a random image), then images uniformly among those with v_k = v, whose
other factors are then independent of the first image's. Working on the stored codes, the metrics never re-encode.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FactorIndex"]


class FactorIndex:
    """Row indices grouped by the class of each factor, for drawing rows that share one factor's value."""

    def __init__(self, factor_classes: np.ndarray) -> None:
        factor_classes = np.asarray(factor_classes)
        self.rows = int(factor_classes.shape[0])
        self.order: list[np.ndarray] = []  # rows sorted by the factor's class
        self.group_of_row: list[np.ndarray] = []  # position of each row's class among the factor's classes
        self.starts: list[np.ndarray] = []
        self.sizes: list[np.ndarray] = []
        for column in factor_classes.T:
            order = np.argsort(column, kind="stable")
            _, starts, inverse, sizes = np.unique(
                column[order], return_index=True, return_inverse=True, return_counts=True
            )
            group_of_row = np.empty(self.rows, dtype=np.int64)
            group_of_row[order] = inverse.ravel()
            self.order.append(order)
            self.group_of_row.append(group_of_row)
            self.starts.append(starts)
            self.sizes.append(sizes)

    def partners(self, factor: int, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each of ``rows`` a uniformly drawn row with the same class of ``factor`` (possibly itself)."""
        groups = self.group_of_row[factor][rows]
        offsets = (rng.random(len(rows)) * self.sizes[factor][groups]).astype(np.int64)
        return self.order[factor][self.starts[factor][groups] + offsets]

    def fixed_batch(self, factor: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` rows (with replacement) sharing one class of ``factor``, the class of a uniformly drawn row
        (so each class comes with its frequency in the data: uniform on the full grid)."""
        rows = np.repeat(rng.integers(self.rows), count)
        return self.partners(factor, rows, rng)
