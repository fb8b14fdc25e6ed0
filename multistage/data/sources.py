"""Turn images read from somewhere (a bundled set, a file in a published format) into a dataset folder.

A loader (`multistage.data.bundled`, `multistage.data.ondisk`) describes what it found as an `ImageSource`: how
many images, their stored shape, the factor table (possibly empty: no ground truth) and a function that reads
chosen rows in order, chunk by chunk. `write_image_source` picks the rows, assigns the train / test split, fits
every image to a square side the networks accept (`fit_images`: 32 or 64; crop, pad or resample) and streams
them into the memory-mapped ``images.npy`` of a dataset folder, with the factor table and meta.json. A source
with factors records ``"observations": "lookup"``, so `GroundTruthDataset.observations_from_factors` draws stored
images with the asked classes. The fitting rules: docs/datasets.md, "Fitting stored images".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from multistage.data import base

SUPPORTED_IMAGE_SIZES = (32, 64)
RESIZE_MODES = ("auto", "pad", "resize")
_SUBSET_STREAM, _SPLIT_STREAM = 1, 2

#: fits a uint8 (n, C, H, W) batch to the dataset's square side (`fit_images` with the chosen size and mode)
Fit = Callable[[np.ndarray], np.ndarray]
#: reads the sorted, distinct rows it is given, in order, as uint8 (n, C, H, W) chunks of at most chunk_size rows;
#: a source of differently sized images applies ``fit`` to each image itself, the others may ignore it.
ChunkReader = Callable[[np.ndarray, int, Fit], Iterator[np.ndarray]]
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class ImageSource:
    """What a loader found, before subsetting, splitting and fitting (see the module docstring).

    ``image_shape`` is the stored (C, H, W) (for a folder of differently sized images: the first one's);
    ``factor_classes`` / ``factor_values`` are (N, K), K = len(factor_names), possibly 0; ``meta`` names the
    format and the path and is merged into meta.json.
    """

    dataset: str
    n_images: int
    image_shape: tuple[int, int, int]
    read_chunks: ChunkReader
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    factor_classes: np.ndarray | None = None
    factor_values: np.ndarray | None = None
    nuisance: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.factor_names)
        if self.factor_classes is None:
            self.factor_classes = np.zeros((self.n_images, k), dtype=np.int64)
        if self.factor_values is None:
            self.factor_values = self.factor_classes.astype(np.float64)

    def without_factors(self) -> ImageSource:
        """The same images with no ground truth (labels dropped)."""
        return dataclasses.replace(
            self, factor_names=(), factor_sizes=(), factor_classes=None, factor_values=None, nuisance={}
        )


def target_size(height: int, width: int, image_size: int | None) -> int:
    """The square side images of ``height`` x ``width`` are fitted to (module docstring)."""
    if image_size is not None:
        if image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES} or None, got {image_size!r}")
        return int(image_size)
    side = min(height, width)
    if height == width and side in SUPPORTED_IMAGE_SIZES:
        return side
    return 32 if side <= 32 else 64


def fit_images(images: np.ndarray, size: int, resize_mode: str = "auto") -> np.ndarray:
    """uint8 (n, C, H, W) -> uint8 (n, C, size, size): centre-crop to a square, then pad or resample."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"fit_images expects uint8 (n, C, H, W) images, got {images.dtype} {images.shape}")
    height, width = images.shape[2:]
    if height == width == size:
        return images
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    images = images[:, :, top : top + side, left : left + side]  # centre crop
    pad = resize_mode == "pad" or (resize_mode == "auto" and side < size and size - side <= size // 8)
    if pad and side <= size:
        before = (size - side) // 2
        after = size - side - before
        return np.pad(images, ((0, 0), (0, 0), (before, after), (before, after)))
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    resized = torch.nn.functional.interpolate(
        batch, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8).numpy()


def read_array_rows(array, rows: np.ndarray, chunk_size: int, convert: Callable[[np.ndarray], np.ndarray]):
    """Chunks of ``convert(array[rows_chunk])`` for an indexable array (memmap, h5py dataset) and sorted rows.

    Contiguous runs are read as slices (fast for memmaps and HDF5), others by index lists.
    """
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        if chunk[-1] - chunk[0] + 1 == len(chunk):
            block = array[int(chunk[0]) : int(chunk[-1]) + 1]
        else:
            block = array[chunk]
        yield convert(np.asarray(block))


def select_rows(blocks: Iterator[tuple[int, np.ndarray]], rows: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    """From sequential ``(first_row, block)`` pairs (a stream read front to back), the chosen sorted ``rows``.

    Yields chunks of at most ``chunk_size`` rows in order; stops reading once the last chosen row is passed.
    """
    pending: list[np.ndarray] = []
    count = 0
    position = 0  # index into rows of the next row wanted
    for first, block in blocks:
        if position >= len(rows):
            break
        last = first + len(block)
        stop = int(np.searchsorted(rows, last, side="left"))
        if stop > position:
            pending.append(block[rows[position:stop] - first])
            count += stop - position
            position = stop
        while count >= chunk_size:
            joined = np.concatenate(pending)
            yield joined[:chunk_size]
            pending, count = [joined[chunk_size:]], count - chunk_size
    if count:
        yield np.concatenate(pending)
    if position < len(rows):
        raise base.DatasetFormatError(f"the stream ended before row {int(rows[position])}")


def choose_rows(n_total: int, n_images: int | None, seed: int) -> np.ndarray:
    """All rows, or ``n_images`` of them drawn without replacement (deterministic from ``seed``), sorted."""
    if n_images is None or n_images >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng([seed, _SUBSET_STREAM])
    return np.sort(rng.choice(n_total, size=int(n_images), replace=False)).astype(np.int64)


def random_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """uint8 (n,): ``round(test_fraction * n)`` rows chosen at random (from ``seed``) are 1 (test), others 0."""
    split = np.zeros(n, dtype=np.uint8)
    split[np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)[: int(round(test_fraction * n))]] = 1
    return split


def check_common_options(n_images, seed, test_fraction) -> None:
    """ValueError naming the option unless n_images is None or >= 1, seed >= 0 and test_fraction in [0, 1)."""
    if n_images is not None and (
        isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1
    ):
        raise ValueError(f"n_images must be None (all) or an int >= 1, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")


def write_image_source(
    source: ImageSource,
    out_dir: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    image_size: int | None = None,
    resize_mode: str = "auto",
    chunk_size: int = 512,
    progress: Progress | None = None,
) -> base.GroundTruthDataset:
    """Write ``source`` as a dataset folder in ``out_dir`` (images fitted, subset, split) and return it loaded.

    ``n_images`` (None = all) draws a random subset, kept in stored order; the test split is
    ``round(test_fraction * n)`` random rows. Options are checked (ValueError naming the option) before anything
    is written; ``progress(done, total)`` is called after each chunk.
    """
    check_common_options(n_images, seed, test_fraction)
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    channels, height, width = source.image_shape
    size = target_size(height, width, image_size)
    rows = choose_rows(source.n_images, n_images, int(seed))
    n = len(rows)
    if n == 0:
        raise base.DatasetFormatError(f"{source.meta.get('path', source.dataset)}: holds no images")
    split = random_split(n, float(test_fraction), int(seed))

    out_dir = Path(out_dir)
    base.begin_dataset_folder(out_dir)
    with base.atomic_path(out_dir / base.IMAGES_FILE) as temporary:
        images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(n, channels, size, size))
        done = 0

        def fit(batch: np.ndarray) -> np.ndarray:
            return fit_images(batch, size, resize_mode)

        for chunk in source.read_chunks(rows, chunk_size, fit):
            fitted = fit(chunk)
            if fitted.shape[1] != channels:
                raise base.DatasetFormatError(
                    f"{source.meta.get('path', source.dataset)}: an image has {fitted.shape[1]} channels, "
                    f"the first had {channels}"
                )
            images[done : done + len(fitted)] = fitted
            done += len(fitted)
            if progress is not None:
                progress(done, n)
        if done != n:
            raise base.DatasetFormatError(f"{source.meta.get('path', source.dataset)}: read {done} of {n} images")
        dataset = base.GroundTruthDataset(
            images=images,
            factor_names=source.factor_names,
            factor_sizes=source.factor_sizes,
            factor_classes=source.factor_classes[rows],
            factor_values=source.factor_values[rows],
            nuisance={name: np.asarray(values)[rows] for name, values in source.nuisance.items()},
            split=split,
        )
        images.flush()
        del images
    meta = {
        "dataset": source.dataset,
        "variant": source.meta.get("variant", ""),
        **source.meta,
        "params": {
            "seed": int(seed),
            "n_images": None if n_images is None else int(n_images),
            "test_fraction": float(test_fraction),
            "image_size": size,
            "resize_mode": resize_mode,
            "stored_image_shape": [channels, height, width],
        },
        "rows": "a random subset of the stored rows, in stored order" if n < source.n_images else "all",
    }
    if source.factor_names:
        meta["observations"] = base.LOOKUP_OBSERVATIONS
    base.finish_dataset_folder(dataset, out_dir, meta)
    del dataset
    return base.load_dataset(out_dir)
