"""Input checks shared by the metrics: one clear ValueError naming the array and what is wrong with it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_codes", "check_factors", "varying_factors", "seeded_subset"]


def check_codes(array: np.ndarray, name: str, columns: int | None = None) -> np.ndarray:
    """``array`` as float64 (N, D) after checking it is 2-d, non-empty and finite (ValueError naming ``name``)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d array (N, D), got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got {array.shape[1]}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{name} contains NaN or infinite values in {rows.size} of {array.shape[0]} rows "
            f"(first: row {rows[0]}); a diverged model gives such codes"
        )
    return array


def check_factors(factor_classes: np.ndarray, factor_names: Sequence[str], rows: int) -> np.ndarray:
    """``factor_classes`` as int64 (N, K) after checking its shape against ``rows`` and the K names."""
    factor_classes = np.asarray(factor_classes)
    if factor_classes.ndim != 2 or factor_classes.shape[0] != rows:
        raise ValueError(f"factor_classes must be (N, K) with N = {rows} rows, got shape {factor_classes.shape}")
    if len(factor_names) != factor_classes.shape[1]:
        raise ValueError(f"{len(factor_names)} factor names for {factor_classes.shape[1]} factor columns")
    if factor_classes.shape[1] == 0:
        raise ValueError("no factors: the metric needs ground-truth factors")
    if not np.issubdtype(factor_classes.dtype, np.integer):
        raise ValueError(f"factor_classes must hold integer class indices, got dtype {factor_classes.dtype}")
    return factor_classes.astype(np.int64, copy=False)


def varying_factors(factor_classes: np.ndarray) -> np.ndarray:
    """Boolean (K,): the factors that take at least two values in the sample (a single-value factor carries no
    information, so every metric reports NaN for it and leaves it out of its means)."""
    return np.array([np.unique(column).size > 1 for column in np.asarray(factor_classes).T], dtype=bool)


def seeded_subset(count: int, size: int, seed: int) -> np.ndarray:
    """``min(size, count)`` row indices of ``count`` rows, a seeded permutation's head (the metrics that score a
    subset of the factor set draw it so)."""
    return np.random.default_rng(seed).permutation(count)[: min(size, count)]
