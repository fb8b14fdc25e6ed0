"""Codes and images the evaluation reads: held-out rows, the representation C from posterior parameters, the
factor set's codes (from stage one's codes file or encoded), memory-mapped reads that release their pages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


class EvaluationInputError(ValueError):
    """The data or a model gives the evaluation something it cannot score (an empty split, NaN codes)."""


def held_out_indices(dataset, count: int, seed: int) -> np.ndarray:
    """``count`` rows of the test split (all of them when it has fewer), chosen by ``seed``, sorted."""
    test = dataset.test_indices
    if len(test) == 0:
        raise EvaluationInputError("the test split of the prepared data is empty; raise prepare.test_fraction")
    chosen = np.random.default_rng(seed).permutation(len(test))[: min(count, len(test))]
    return np.sort(test[chosen])


def has_ground_truth(dataset) -> bool:
    return bool(getattr(dataset, "has_ground_truth", len(dataset.factor_names) > 0))


def is_image_data(dataset) -> bool:
    """Images (N, C, H, W), not series."""
    return dataset.images.ndim == 4


def discrete_blocks(model) -> tuple[int, ...]:
    """Sizes of the model's discrete codes (JointVAE), () for a purely Gaussian code."""
    return tuple(int(size) for size in getattr(model, "discrete_dims", ()) or ())


def code_names(model) -> list[str]:
    """The model's names of its code's columns (``z0``, ``z1``, ... when it names none)."""
    names = getattr(model, "code_names", None)
    return list(names) if names is not None else [f"z{j}" for j in range(model.config.latent_dim)]


def representation_from_codes(mu: np.ndarray, alpha: np.ndarray | None, blocks: tuple[int, ...]) -> np.ndarray:
    """The metrics' code C from posterior parameters: the means, then the one-hot argmax of each discrete code
    (the stage-one interface's ``representation``, contracts point 2)."""
    parts = [mu]
    start = 0
    for size in blocks:
        parts.append(np.eye(size, dtype=mu.dtype)[alpha[:, start : start + size].argmax(axis=1)])
        start += size
    return np.concatenate(parts, axis=1)


def factor_set_codes(
    dataset,
    model,
    indices: np.ndarray,
    encode: Callable,
    batch_size: int,
    codes_file: str | Path | None = None,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """mu, logvar (and alpha, JointVAE's q(c|x)) of the rows ``indices``: from ``codes_file`` (stage one's codes
    parquet) when it holds every image, else ``encode(model, rows, batch_size)`` (a dict of arrays) in batches."""
    if codes_file is not None and Path(codes_file).exists():
        import pyarrow.parquet as pq

        table = pq.read_table(codes_file)
        if table.num_rows == len(dataset):  # stage one's codes of every image, written beside its model

            def columns(names: list[str]) -> np.ndarray:
                return np.stack([table.column(n).to_numpy()[indices] for n in names], axis=1).astype(np.float64)

            latent = int(model.config.latent_dim)
            codes = {
                "mu": columns([f"mu_{j}" for j in range(latent)]),
                "logvar": columns([f"logvar_{j}" for j in range(latent)]),
            }
            blocks = discrete_blocks(model)
            if blocks:
                codes["alpha"] = columns([f"alpha_{i}_{k}" for i, size in enumerate(blocks) for k in range(size)])
            return codes
    images = ReadAndRelease(dataset.images)

    class Rows:  # the chosen rows of the memory-mapped images, read one batch slice at a time
        def __len__(self) -> int:
            return len(indices)

        def __getitem__(self, part: slice) -> np.ndarray:
            return images[indices[part]]

    started = time.perf_counter()
    codes = encode(model, Rows(), batch_size)
    if show_progress:
        print(f"evaluate: encoded the factor set ({len(indices)} images) in {time.perf_counter() - started:.0f} s")
    return {key: value.astype(np.float64) for key, value in codes.items()}


class ReadAndRelease:
    """Rows of memory-mapped images read as copies; after each read this process's pages of the mapping are dropped
    (``MADV_DONTNEED``; they stay in the page cache for the next read). Without it the kernel maps up to 16
    neighbouring pages on each page fault (fault-around), and the stage's scattered reads (classifier batches,
    held-out and reference images) would leave most of the file counted in its resident memory."""

    def __init__(self, images: np.ndarray) -> None:
        import mmap

        self.images = images
        self.handle = getattr(images, "_mmap", None) if hasattr(mmap, "MADV_DONTNEED") else None
        self.shape, self.ndim, self.dtype = images.shape, images.ndim, images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        import mmap

        if self.handle is None:
            return np.array(self.images[index])
        rows = np.arange(len(self.images))[index] if isinstance(index, slice) else np.asarray(index)
        batch = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for start in range(0, len(rows), 256):  # at most 256 rows (x 16 pages of fault-around) mapped at a time
            batch[start : start + 256] = self.images[rows[start : start + 256]]
            self.handle.madvise(mmap.MADV_DONTNEED)
        return batch


def return_free_memory() -> None:
    """Give the heap memory freed by the held-out phase (network activations) back to the system before the factor
    set's metrics allocate theirs (glibc keeps freed heap pages otherwise). A no-op where the C library has no
    ``malloc_trim``."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_finite_codes(codes: dict[str, np.ndarray], where: str) -> None:
    for key, array in codes.items():
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise EvaluationInputError(
                f"the stage-one encoder gave NaN or infinite {key} for {int(bad.sum())} of {len(bad)} "
                f"images of the {where} (first: row {int(np.flatnonzero(bad)[0])}); the model has "
                f"diverged: retrain stage one (models/stage_one)"
            )


def timer(scores: dict):
    """``with timed("group"):`` records the seconds the block took as ``evaluate.seconds.<group>``."""

    @contextlib.contextmanager
    def timed(group: str):
        started = time.perf_counter()
        yield
        scores[f"evaluate.seconds.{group}"] = time.perf_counter() - started

    return timed
