"""A ground-truth dataset: images, the factors that generated them, and a way to render more.

`GroundTruthDataset` holds what the disentanglement metrics need: ``images`` (uint8 ``(N, C, H, W)``, memory-mapped
when loaded; float32 ``(N, C, T)`` series in [0, 1] for the pendulum), ``factor_names`` / ``factor_sizes``
(empty for data without ground truth: then `NoGroundTruthError` is raised by what needs factors),
``factor_classes`` / ``factor_values``, ``nuisance`` (per-image values the factors do not describe), ``extra``
(named per-image arrays) and ``split`` (0 = train, 1 = test).

On disk a dataset is a folder: ``images.npy``, ``factors.parquet``, ``extra.<name>.npy`` and ``meta.json``
(written last), each written under a temporary name and renamed. New observations for given factors come from
a renderer (procedural datasets) or a lookup of stored images. `load_dataset` checks that the files agree and
names the file at fault. The folder format in full: docs/datasets.md, "The dataset folder".
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multistage.io import atomic_path

if TYPE_CHECKING:  # torch is imported where it is used, so making a dataset does not pay for importing it
    import torch

IMAGES_FILE = "images.npy"
FACTORS_FILE = "factors.parquet"
META_FILE = "meta.json"
FORMAT_VERSION = 1
NUISANCE_PREFIX = "nuisance."
EXTRA_PREFIX = "extra."
#: meta.json ``"observations"`` value: new observations are stored images drawn by their factor classes.
LOOKUP_OBSERVATIONS = "lookup"

#: A renderer turns factor classes (n, K) int64 and a numpy Generator into uint8 images (n, C, H, W) (float32
#: series (n, C, T) for a time-series dataset).
Renderer = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: A renderer factory builds the renderer of a saved dataset from its meta.json contents.
RendererFactory = Callable[[dict], Renderer]

# Datasets whose renderer lives in a module of this package; importing the module registers the factory.
_RENDERER_MODULES: dict[str, str] = {
    "dsprites": "multistage.data.dsprites",
    "pendulum": "multistage.data.pendulum",
}
_RENDERER_FACTORIES: dict[str, RendererFactory] = {}


class DatasetFormatError(ValueError):
    """A dataset folder on disk is missing a file or its files disagree; the message names the file."""


class NoGroundTruthError(ValueError):
    """The dataset has no ground-truth factors, so what was asked (factor sampling, a metric) cannot be done."""


def register_renderer_factory(dataset_name: str, factory: RendererFactory) -> None:
    """Let `load_dataset` restore the renderer of datasets whose meta.json names ``dataset_name``."""
    _RENDERER_FACTORIES[dataset_name] = factory


def _renderer_factory(dataset_name: str) -> RendererFactory | None:
    if dataset_name not in _RENDERER_FACTORIES and dataset_name in _RENDERER_MODULES:
        importlib.import_module(_RENDERER_MODULES[dataset_name])
    return _RENDERER_FACTORIES.get(dataset_name)


@dataclasses.dataclass(eq=False)
class GroundTruthDataset:
    """Images with the ground-truth factors that generated them (see the module docstring).

    ``images`` is uint8 (N, C, H, W), or float32 (N, C, T) in [0, 1] for a time-series dataset (the pendulum).
    ``renderer`` (optional) renders new observations for given factor classes; ``meta`` is the contents of
    meta.json (dataset name, variant, params) when the dataset came from disk or a generator; ``extra`` holds
    named per-image arrays stored beside the images (first axis N).
    """

    images: np.ndarray
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    factor_classes: np.ndarray
    factor_values: np.ndarray
    nuisance: dict[str, np.ndarray]
    split: np.ndarray
    renderer: Renderer | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.factor_names = tuple(str(name) for name in self.factor_names)
        self.factor_sizes = tuple(int(size) for size in self.factor_sizes)
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None
        _check_consistent(self, where="GroundTruthDataset")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image, or (C, T) of one series."""
        return tuple(int(size) for size in self.images.shape[1:])

    @property
    def is_series(self) -> bool:
        """True for a time-series dataset (float32 (N, C, T) ``images``), False for images."""
        return self.images.ndim == 3

    @property
    def has_ground_truth(self) -> bool:
        """True when the dataset has at least one ground-truth factor (so factor-based metrics apply)."""
        return len(self.factor_names) > 0

    def require_ground_truth(self, what: str) -> None:
        """Raise `NoGroundTruthError` saying that ``what`` needs factors, unless the dataset has them."""
        if not self.has_ground_truth:
            name = self.meta.get("dataset", "<unnamed>")
            raise NoGroundTruthError(
                f"{what} needs ground-truth factors, but dataset {name!r} has none (e.g. a folder of images, or "
                "a labelled set prepared without its labels); use a dataset with factors, or a metric that "
                "needs none"
            )

    @property
    def train_indices(self) -> np.ndarray:
        """Row indices of the training images, int64, ascending."""
        return np.flatnonzero(self.split == 0).astype(np.int64)

    @property
    def test_indices(self) -> np.ndarray:
        """Row indices of the test images, int64, ascending."""
        return np.flatnonzero(self.split == 1).astype(np.int64)

    def sample_factors(self, n: int, rng: np.random.Generator | int | None) -> np.ndarray:
        """Draw ``n`` factor combinations: int64 ``(n, K)``.

        For a rendered dataset each factor's class is uniform over its size. For a stored dataset whose new
        observations are looked up (``meta["observations"] == "lookup"``) the combinations are those of stored
        images drawn uniformly, so every one of them can be observed (a subset need not hold every combination).
        Raises `NoGroundTruthError` when the dataset has no factors.
        """
        self.require_ground_truth("sample_factors")
        rng = np.random.default_rng(rng)
        if self.renderer is None and self.meta.get("observations") == LOOKUP_OBSERVATIONS:
            return self.factor_classes[rng.integers(0, len(self), size=int(n))].copy()
        return rng.integers(0, np.asarray(self.factor_sizes, dtype=np.int64), size=(int(n), len(self.factor_sizes)))

    def observations_from_factors(self, classes: np.ndarray, rng: np.random.Generator | int | None) -> np.ndarray:
        """New images for factor classes ``(n, K)``: uint8 ``(n, C, H, W)`` (float32 ``(n, C, T)`` for series).

        A renderer draws the nuisance the factors do not describe (colour, texture) afresh with ``rng``, from the
        same distribution as the stored images. A stored dataset with ``"observations": "lookup"`` returns, per
        row, a stored image with exactly those classes drawn uniformly with ``rng`` (ValueError naming the first
        combination no stored image has). Raises `NoGroundTruthError` when the dataset has no factors and
        `NotImplementedError` when it has neither a renderer nor lookup.
        """
        self.require_ground_truth("observations_from_factors")
        classes = check_factor_classes(classes, self.factor_names, self.factor_sizes)
        if self.renderer is not None:
            return self.renderer(classes, np.random.default_rng(rng))
        if self.meta.get("observations") == LOOKUP_OBSERVATIONS:
            return np.asarray(self.images[self._lookup_rows(classes, np.random.default_rng(rng))])
        name = self.meta.get("dataset", "<unnamed>")
        raise NotImplementedError(
            f"dataset {name!r} has no renderer, so observations_from_factors cannot draw new images; "
            f"renderers are known for: {sorted(set(_RENDERER_MODULES) | set(_RENDERER_FACTORIES))}"
        )

    def _lookup_rows(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Row indices (n,) of stored images with the factor classes of each row of ``classes``."""
        if self._lookup is None:
            keys = np.ravel_multi_index(self.factor_classes.T, self.factor_sizes)
            order = np.argsort(keys, kind="stable")
            self._lookup = (keys[order], order)
        sorted_keys, order = self._lookup
        wanted = np.ravel_multi_index(classes.T, self.factor_sizes)
        first = np.searchsorted(sorted_keys, wanted, side="left")
        count = np.searchsorted(sorted_keys, wanted, side="right") - first
        if (count == 0).any():
            missing = classes[np.argmax(count == 0)]
            raise ValueError(
                "no stored image has the factor classes "
                f"{dict(zip(self.factor_names, missing.tolist()))}; this dataset can only return stored images"
            )
        rows = order[first + (rng.random(len(wanted)) * count).astype(np.int64)]
        return rows


def check_factor_classes(
    classes: np.ndarray, factor_names: tuple[str, ...], factor_sizes: tuple[int, ...]
) -> np.ndarray:
    """``classes`` as int64 (n, K) after checking shape, dtype and range (ValueError saying which)."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != len(factor_sizes):
        raise ValueError(f"classes must have shape (n, {len(factor_sizes)}) {tuple(factor_names)}, got {classes.shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be integer class indices, got dtype {classes.dtype}")
    if classes.size and ((classes < 0).any() or (classes >= np.asarray(factor_sizes)).any()):
        raise ValueError(f"classes out of range: factor sizes are {dict(zip(factor_names, factor_sizes))}")
    return classes.astype(np.int64, copy=False)


def _check_consistent(dataset: GroundTruthDataset, where: str) -> None:
    """Raise `DatasetFormatError` (mentioning ``where``) unless the arrays of ``dataset`` agree."""
    n_factors = len(dataset.factor_names)
    images = dataset.images
    problems = []
    if not _valid_image_array(images.dtype, images.ndim):
        problems.append(
            f"images must be uint8 (N, C, H, W) or float32 series (N, C, T), got {images.dtype} {images.shape}"
        )
    n = images.shape[0] if images.ndim else -1
    if len(dataset.factor_sizes) != n_factors:
        problems.append(f"{n_factors} factor names but {len(dataset.factor_sizes)} factor sizes")
    for name, array in (("factor_classes", dataset.factor_classes), ("factor_values", dataset.factor_values)):
        if array.shape != (n, n_factors):
            problems.append(f"{name} must have shape ({n}, {n_factors}), got {array.shape}")
    if dataset.split.shape != (n,):
        problems.append(f"split must have shape ({n},), got {dataset.split.shape}")
    elif dataset.split.size and not np.isin(dataset.split, (0, 1)).all():
        problems.append("split must hold only 0 (train) and 1 (test)")
    for name, array in dataset.nuisance.items():
        if np.shape(array) != (n,):
            problems.append(f"nuisance {name!r} must have shape ({n},), got {np.shape(array)}")
    for name, array in dataset.extra.items():
        if not name.isidentifier() or np.ndim(array) < 1 or np.shape(array)[0] != n:
            problems.append(f"extra {name!r} must be an array with first axis {n} named by an identifier")
    if not problems and n > 0 and n_factors:
        classes = dataset.factor_classes
        if (classes < 0).any() or (classes >= np.asarray(dataset.factor_sizes)).any():
            problems.append(f"factor_classes out of range for factor sizes {dataset.factor_sizes}")
    if problems:
        raise DatasetFormatError(f"{where}: " + "; ".join(problems))


def _valid_image_array(dtype: np.dtype, ndim: int) -> bool:
    """uint8 images (N, C, H, W), or float32 series (N, C, T)."""
    return (dtype == np.uint8 and ndim == 4) or (dtype == np.float32 and ndim == 3)


def to_float(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn a uint8 image batch (numpy, memmap or tensor) into a float32 tensor in [0, 1] (x / 255).

    Bool batches map to 0/1; floating batches are taken as already in [0, 1] and only cast to float32.
    A tensor keeps its device.
    """
    import torch

    if isinstance(batch, torch.Tensor):
        if batch.dtype == torch.uint8:
            return batch.to(torch.float32).div_(255.0)
        if batch.dtype == torch.bool or batch.is_floating_point():
            return batch.to(torch.float32)
        raise TypeError(f"to_float expects uint8, bool or floating images, got tensor of dtype {batch.dtype}")
    array = np.asarray(batch)
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32)).div_(255.0)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(array.astype(np.float32))
    raise TypeError(f"to_float expects uint8, bool or floating images, got array of dtype {array.dtype}")


# --------------------------------------------------------------------------------------------- writing


def write_factors(
    path: str | os.PathLike,
    factor_names: tuple[str, ...],
    factor_classes: np.ndarray,
    factor_values: np.ndarray,
    split: np.ndarray,
    nuisance: dict[str, np.ndarray],
) -> None:
    """Write the factor table (columns as in the module docstring) atomically to ``path``."""
    columns: dict[str, Any] = {
        "index": pa.array(np.arange(len(split), dtype=np.int64)),
        "split": pa.array(np.asarray(split, dtype=np.uint8)),
    }
    for k, name in enumerate(factor_names):
        columns[f"{name}_class"] = pa.array(np.ascontiguousarray(factor_classes[:, k], dtype=np.int64))
        columns[f"{name}_value"] = pa.array(np.ascontiguousarray(factor_values[:, k], dtype=np.float64))
    for name, values in nuisance.items():
        columns[NUISANCE_PREFIX + name] = pa.array(np.asarray(values, dtype=np.float64))
    with atomic_path(path) as temporary:
        pq.write_table(pa.table(columns), temporary)


def write_meta(path: str | os.PathLike, meta: dict) -> None:
    """Write ``meta`` as indented JSON atomically to ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def full_meta(dataset: GroundTruthDataset, meta: dict) -> dict:
    """``meta`` (dataset name, variant, params) completed with what the arrays say about themselves."""
    return {
        **meta,
        "format_version": FORMAT_VERSION,
        "factor_names": list(dataset.factor_names),
        "factor_sizes": list(dataset.factor_sizes),
        "image_shape": list(dataset.image_shape),
        "image_dtype": str(dataset.images.dtype),
        "n_images": len(dataset),
        "nuisance_names": sorted(dataset.nuisance),
        "extra_names": sorted(dataset.extra),
    }


def save_dataset(dataset: GroundTruthDataset, out_dir: str | os.PathLike, meta: dict) -> None:
    """Write ``dataset`` to ``out_dir`` as images.npy, factors.parquet and meta.json, each atomically.

    ``meta`` should name the dataset (``"dataset"``), its ``"variant"`` and the ``"params"`` that made it;
    factor names and sizes, image shape and image count are added here.
    """
    out_dir = Path(out_dir)
    _check_consistent(dataset, where=f"save_dataset({out_dir})")
    begin_dataset_folder(out_dir)
    with atomic_path(out_dir / IMAGES_FILE) as temporary:
        np.save(temporary, np.ascontiguousarray(dataset.images))
    for name, array in dataset.extra.items():
        with atomic_path(out_dir / extra_file(name)) as temporary:
            np.save(temporary, np.ascontiguousarray(array))
    finish_dataset_folder(dataset, out_dir, meta)


def extra_file(name: str) -> str:
    """File name of the extra array ``name`` inside a dataset folder."""
    return f"{EXTRA_PREFIX}{name}.npy"


def begin_dataset_folder(out_dir: str | os.PathLike) -> None:
    """Create ``out_dir`` and remove a previous meta.json, which is written last and so marks a whole dataset.

    A writer that stops half-way therefore leaves a folder that `load_dataset` refuses, naming meta.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)


def finish_dataset_folder(dataset: GroundTruthDataset, out_dir: str | os.PathLike, meta: dict) -> None:
    """Write factors.parquet, then meta.json, beside an images.npy already in ``out_dir`` (both atomically).

    For generators that stream images (and any extra arrays) straight into memmaps and then describe them the
    way `save_dataset` does.
    """
    out_dir = Path(out_dir)
    write_factors(
        out_dir / FACTORS_FILE,
        dataset.factor_names,
        dataset.factor_classes,
        dataset.factor_values,
        dataset.split,
        dataset.nuisance,
    )
    write_meta(out_dir / META_FILE, full_meta(dataset, meta))


# --------------------------------------------------------------------------------------------- reading


def load_dataset(out_dir: str | os.PathLike) -> GroundTruthDataset:
    """Open a dataset folder written by `save_dataset` (or a generator): images memory-mapped read-only.

    Raises `FileNotFoundError` naming the missing file, or `DatasetFormatError` naming the file whose
    contents are unreadable or disagree with the others (image shape, row count, columns).
    The renderer is restored from meta.json when the dataset name has one.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {out_dir} does not exist")
    paths = {name: out_dir / name for name in (META_FILE, IMAGES_FILE, FACTORS_FILE)}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {path} is missing")

    meta_path = paths[META_FILE]
    try:
        meta = json.loads(meta_path.read_text())
        factor_names = tuple(str(name) for name in meta["factor_names"])
        factor_sizes = tuple(int(size) for size in meta["factor_sizes"])
        image_shape = tuple(int(size) for size in meta["image_shape"])
        n_images = int(meta["n_images"])
        extra_names = [str(name) for name in meta.get("extra_names", [])]
        np.dtype(str(meta.get("image_dtype", "uint8")))
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetFormatError(f"{meta_path}: unreadable or incomplete meta ({error!r})") from error

    images_path = paths[IMAGES_FILE]
    try:
        images = np.load(images_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise DatasetFormatError(f"{images_path}: not a readable .npy array ({error})") from error
    expected_dtype = np.dtype(str(meta.get("image_dtype", "uint8")))
    if (
        images.dtype != expected_dtype
        or not _valid_image_array(images.dtype, images.ndim)
        or tuple(images.shape[1:]) != image_shape
    ):
        raise DatasetFormatError(
            f"{images_path}: expected {expected_dtype} images of shape (N, {', '.join(map(str, image_shape))}) "
            f"as {meta_path} says, got {images.dtype} {images.shape}"
        )
    if images.shape[0] != n_images:
        raise DatasetFormatError(f"{images_path}: holds {images.shape[0]} images but {meta_path} says {n_images}")

    extra = {}
    for name in extra_names:
        extra_path = out_dir / extra_file(name)
        if not extra_path.is_file():
            raise FileNotFoundError(f"dataset file {extra_path} is missing ({meta_path} lists extra {name!r})")
        try:
            extra[name] = np.load(extra_path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as error:
            raise DatasetFormatError(f"{extra_path}: not a readable .npy array ({error})") from error
        if extra[name].ndim < 1 or extra[name].shape[0] != n_images:
            raise DatasetFormatError(f"{extra_path}: first axis must be {n_images}, got shape {extra[name].shape}")

    factors_path = paths[FACTORS_FILE]
    try:
        table = pq.read_table(factors_path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetFormatError(f"{factors_path}: not a readable parquet file ({error})") from error
    if table.num_rows != images.shape[0]:
        raise DatasetFormatError(
            f"{factors_path}: has {table.num_rows} rows but {images_path} holds {images.shape[0]} images"
        )
    required = ["index", "split"] + [f"{name}_{kind}" for name in factor_names for kind in ("class", "value")]
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise DatasetFormatError(f"{factors_path}: missing columns {missing}")

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    if not np.array_equal(column("index", np.int64), np.arange(table.num_rows)):
        raise DatasetFormatError(f"{factors_path}: column 'index' must be 0..{table.num_rows - 1} in order")
    n = table.num_rows
    k = len(factor_names)
    factor_classes = np.empty((n, k), dtype=np.int64)
    factor_values = np.empty((n, k), dtype=np.float64)
    for j, name in enumerate(factor_names):
        factor_classes[:, j] = column(f"{name}_class", np.int64)
        factor_values[:, j] = column(f"{name}_value", np.float64)
    nuisance = {
        name[len(NUISANCE_PREFIX) :]: column(name, np.float64)
        for name in table.column_names
        if name.startswith(NUISANCE_PREFIX)
    }
    factory = _renderer_factory(str(meta.get("dataset", "")))
    try:
        return GroundTruthDataset(
            images=images,
            factor_names=factor_names,
            factor_sizes=factor_sizes,
            factor_classes=factor_classes,
            factor_values=factor_values,
            nuisance=nuisance,
            split=column("split", np.uint8),
            renderer=factory(meta) if factory is not None else None,
            meta=meta,
            extra=extra,
        )
    except DatasetFormatError as error:
        raise DatasetFormatError(f"{factors_path} / {meta_path}: {error}") from error
