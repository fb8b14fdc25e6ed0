"""A ground-truth dataset: images, the factors that generated them, and a way to render more.

The disentanglement metrics (MIG, conditioning terms of MS-VAE sec. 4) need images together with the class of
each generating factor, and some of them need fresh observations for chosen factors. `GroundTruthDataset`
holds exactly that:

* ``images``: uint8 ``(N, C, H, W)`` in 0..255, a read-only ``np.memmap`` when loaded from disk;
* ``factor_classes`` / ``factor_values``: the class index and the value of every factor of every image;
* ``nuisance``: per-image values the factors do not describe (colour, texture), possibly empty;
* ``split``: 0 = train, 1 = test.

On disk a dataset is a folder with three files, each written to a temporary name in the same folder and then
renamed (``os.replace``), so a reader never sees half a file:

* ``images.npy``: a numpy ``.npy`` array, memory-mappable;
* ``factors.parquet``: columns ``index``, ``split``, ``<factor>_class``, ``<factor>_value``,
  ``nuisance.<name>``;
* ``meta.json``: dataset name, variant, factor names and sizes, params, image shape.

`load_dataset` checks that the three agree and names the file at fault when they do not.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from multistage.io import atomic_path
import pyarrow as pa
import pyarrow.parquet as pq
import torch

IMAGES_FILE = "images.npy"
FACTORS_FILE = "factors.parquet"
META_FILE = "meta.json"
FORMAT_VERSION = 1
NUISANCE_PREFIX = "nuisance."

#: A renderer turns factor classes (n, K) int64 and a numpy Generator into uint8 images (n, C, H, W).
Renderer = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: A renderer factory builds the renderer of a saved dataset from its meta.json contents.
RendererFactory = Callable[[dict], Renderer]

# Datasets whose renderer lives in a module of this package; importing the module registers the factory.
_RENDERER_MODULES: dict[str, str] = {"dsprites": "multistage.data.dsprites"}
_RENDERER_FACTORIES: dict[str, RendererFactory] = {}


class DatasetFormatError(ValueError):
    """A dataset folder on disk is missing a file or its files disagree; the message names the file."""


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

    ``renderer`` (optional) renders new observations for given factor classes; ``meta`` is the contents of
    meta.json (dataset name, variant, params) when the dataset came from disk or a generator.
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

    def __post_init__(self) -> None:
        self.factor_names = tuple(str(name) for name in self.factor_names)
        self.factor_sizes = tuple(int(size) for size in self.factor_sizes)
        _check_consistent(self, where="GroundTruthDataset")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(size) for size in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def train_indices(self) -> np.ndarray:
        """Row indices of the training images, int64, ascending."""
        return np.flatnonzero(self.split == 0).astype(np.int64)

    @property
    def test_indices(self) -> np.ndarray:
        """Row indices of the test images, int64, ascending."""
        return np.flatnonzero(self.split == 1).astype(np.int64)

    def sample_factors(self, n: int, rng: np.random.Generator | int | None) -> np.ndarray:
        """Draw ``n`` factor combinations, each factor's class uniform over its sizes: int64 ``(n, K)``."""
        rng = np.random.default_rng(rng)
        return rng.integers(0, np.asarray(self.factor_sizes, dtype=np.int64), size=(int(n), len(self.factor_sizes)))

    def observations_from_factors(self, classes: np.ndarray, rng: np.random.Generator | int | None) -> np.ndarray:
        """Render new images for factor classes ``(n, K)``: uint8 ``(n, C, H, W)``.

        Nuisance the factors do not describe (colour, texture) is drawn afresh with ``rng``, from the same
        distribution as the stored images. Raises `NotImplementedError` when the dataset has no renderer.
        """
        if self.renderer is None:
            name = self.meta.get("dataset", "<unnamed>")
            raise NotImplementedError(
                f"dataset {name!r} has no renderer, so observations_from_factors cannot draw new images; "
                f"renderers are known for: {sorted(set(_RENDERER_MODULES) | set(_RENDERER_FACTORIES))}"
            )
        classes = check_factor_classes(classes, self.factor_names, self.factor_sizes)
        return self.renderer(classes, np.random.default_rng(rng))


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
    if images.ndim != 4 or images.dtype != np.uint8:
        problems.append(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
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
    if not problems and n > 0 and n_factors:
        classes = dataset.factor_classes
        if (classes < 0).any() or (classes >= np.asarray(dataset.factor_sizes)).any():
            problems.append(f"factor_classes out of range for factor sizes {dataset.factor_sizes}")
    if problems:
        raise DatasetFormatError(f"{where}: " + "; ".join(problems))


def to_float(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn a uint8 image batch (numpy, memmap or tensor) into a float32 tensor in [0, 1] (x / 255).

    Bool batches map to 0/1; floating batches are taken as already in [0, 1] and only cast to float32.
    A tensor keeps its device.
    """
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
        "n_images": len(dataset),
        "nuisance_names": sorted(dataset.nuisance),
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
    finish_dataset_folder(dataset, out_dir, meta)


def begin_dataset_folder(out_dir: str | os.PathLike) -> None:
    """Create ``out_dir`` and remove a previous meta.json, which is written last and so marks a whole dataset.

    A writer that stops half-way therefore leaves a folder that `load_dataset` refuses, naming meta.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)


def finish_dataset_folder(dataset: GroundTruthDataset, out_dir: str | os.PathLike, meta: dict) -> None:
    """Write factors.parquet, then meta.json, beside an images.npy already in ``out_dir`` (both atomically).

    For generators that stream images straight into a memmap and then describe them the way `save_dataset`
    does.
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
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetFormatError(f"{meta_path}: unreadable or incomplete meta ({error!r})") from error

    images_path = paths[IMAGES_FILE]
    try:
        images = np.load(images_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise DatasetFormatError(f"{images_path}: not a readable .npy array ({error})") from error
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != image_shape:
        raise DatasetFormatError(
            f"{images_path}: expected uint8 images of shape (N, {', '.join(map(str, image_shape))}) "
            f"as {meta_path} says, got {images.dtype} {images.shape}"
        )
    if images.shape[0] != n_images:
        raise DatasetFormatError(f"{images_path}: holds {images.shape[0]} images but {meta_path} says {n_images}")

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
        )
    except DatasetFormatError as error:
        raise DatasetFormatError(f"{factors_path} / {meta_path}: {error}") from error
