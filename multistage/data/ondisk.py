"""Loaders for the published formats of the datasets a user has on disk; each returns an `ImageSource`.

Formats: ``dsprites_npz`` (deepmind's npz), ``shapes3d_h5`` (3dshapes.h5), ``smallnorb`` (NYU binary matrices),
``cars3d`` (one MATLAB v5 .mat per car), ``mpi3d_npz``, ``mnist_idx`` (MNIST / Fashion-MNIST IDX) and
``image_folder`` (no ground truth). What each loader reads, array by array: docs/datasets.md, "On-disk formats".

Every loader checks the file against its published format before a byte is written and raises one error that
names the path and the expected format: `FileNotFoundError` for a missing path, `DatasetFormatError` for a file
that is truncated, malformed or of the wrong kind. Images are read in chunks (memory maps, HDF5 slices, or a
front-to-back stream for compressed members), so files of several gigabytes never sit in memory.
"""

from __future__ import annotations

import gzip
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from multistage.data import base
from multistage.data.sources import Fit, ImageSource, read_array_rows, select_rows

DatasetFormatError = base.DatasetFormatError

DSPRITES_NAMES = ("shape", "scale", "orientation", "posX", "posY")
DSPRITES_SIZES = (3, 6, 40, 32, 32)

SHAPES3D_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_GRID = {
    "floor_hue": np.linspace(0.0, 0.9, 10),
    "wall_hue": np.linspace(0.0, 0.9, 10),
    "object_hue": np.linspace(0.0, 0.9, 10),
    "scale": np.linspace(0.75, 1.25, 8),
    "shape": np.arange(4.0),
    "orientation": np.linspace(-30.0, 30.0, 15),
}

SMALLNORB_NAMES = ("category", "elevation", "azimuth", "lighting")
SMALLNORB_SIZES = (5, 9, 18, 6)
SMALLNORB_CHUNKS = ("5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing")
_NORB_DTYPES = {
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C55: np.dtype("u1"),
    0x1E3D4C56: np.dtype("<i2"),
}

CARS3D_NAMES = ("elevation", "azimuth", "object")

MPI3D_NAMES = (
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
)
MPI3D_SIZES = (6, 6, 2, 3, 3, 40, 40)
MPI3D_SIZES_FIRST_RELEASE = (4, 4, 2, 3, 3, 40, 40)

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
_STREAM_BLOCK_BYTES = 1 << 24  # read compressed streams 16 MiB at a time


# ----------------------------------------------------------------------------------------------- helpers


def _existing(path: str | Path, expected: str, kind: str = "file") -> Path:
    """``path`` as a Path when it exists (a file or a folder, per ``kind``), else FileNotFoundError saying what."""
    path = Path(path).expanduser()
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        raise FileNotFoundError(f"{path}: no such {kind}; expected {expected}")
    return path


def _format_error(path: Path, expected: str, problem: str) -> DatasetFormatError:
    return DatasetFormatError(f"{path}: {problem}; expected {expected}")


def _grid_classes(sizes: Sequence[int]) -> np.ndarray:
    """All class combinations of a factor grid in row-major order (last factor fastest): int64 (prod, K)."""
    return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), tuple(sizes)), axis=1).astype(np.int64)


def _stream_rows(
    stream: BinaryIO, row_shape: tuple[int, ...], dtype: np.dtype, n_rows: int, where: Path, expected: str
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, block)`` pairs read front to back from ``stream``; a short read is a DatasetFormatError."""
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    rows_per_block = max(1, _STREAM_BLOCK_BYTES // max(row_bytes, 1))
    first = 0
    while first < n_rows:
        count = min(rows_per_block, n_rows - first)
        try:
            data = stream.read(count * row_bytes)
        except (EOFError, OSError, zipfile.BadZipFile, gzip.BadGzipFile) as error:
            raise _format_error(where, expected, f"unreadable after row {first} ({error})") from error
        if len(data) != count * row_bytes:
            raise _format_error(
                where, expected, f"truncated: ends inside row {first + len(data) // row_bytes} of {n_rows}"
            )
        yield first, np.frombuffer(data, dtype=dtype).reshape((count, *row_shape))
        first += count


def _nchw(block: np.ndarray) -> np.ndarray:
    """(n, H, W) -> (n, 1, H, W); (n, H, W, C) -> (n, C, H, W); uint8."""
    if block.ndim == 3:
        return np.ascontiguousarray(block[:, None], dtype=np.uint8)
    return np.ascontiguousarray(block.transpose(0, 3, 1, 2), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ npz


class _NpyMember:
    """One ``<key>.npy`` member of an ``.npz`` archive: its header read, its rows streamed on demand."""

    def __init__(self, path: Path, key: str, expected: str) -> None:
        self.path, self.key, self.expected = path, key, expected
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                if f"{key}.npy" not in names:
                    keys = sorted(name.removesuffix(".npy") for name in names)
                    raise _format_error(path, expected, f"has no array {key!r} (arrays: {keys})")
                with archive.open(f"{key}.npy") as stream:
                    self.shape, self.dtype = _read_npy_header(stream, path, key, expected)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            if isinstance(error, DatasetFormatError):
                raise
            raise _format_error(path, expected, f"not a readable .npz archive ({error})") from error

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as stream:
                _read_npy_header(stream, self.path, self.key, self.expected)
                yield from _stream_rows(stream, self.shape[1:], self.dtype, self.shape[0], self.path, self.expected)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise _format_error(self.path, self.expected, f"array {self.key!r} unreadable ({error})") from error

    def load(self) -> np.ndarray:
        """The whole array (for the small label arrays)."""
        blocks = [block for _, block in self.blocks()]
        return np.concatenate(blocks) if blocks else np.zeros(self.shape, dtype=self.dtype)


def _read_npy_header(stream: BinaryIO, path: Path, key: str, expected: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(stream)
    except (ValueError, EOFError) as error:
        raise _format_error(path, expected, f"array {key!r} has no valid .npy header ({error})") from error
    if fortran_order and len(shape) > 1:
        raise _format_error(path, expected, f"array {key!r} is stored in Fortran order, which is not supported")
    if dtype.hasobject:
        raise _format_error(path, expected, f"array {key!r} holds Python objects")
    return tuple(int(s) for s in shape), dtype


# ------------------------------------------------------------------------------------------------ dSprites


def dsprites_npz(path: str | Path) -> ImageSource:
    """The published dSprites archive (module table): 5 factors, images 0/1 -> 0/255, 1 x 64 x 64."""
    expected = "the dSprites .npz (imgs uint8 (N, 64, 64), latents_classes (N, 6), latents_values (N, 6), metadata)"
    path = _existing(path, expected)
    images = _NpyMember(path, "imgs", expected)
    classes_member = _NpyMember(path, "latents_classes", expected)
    values_member = _NpyMember(path, "latents_values", expected)
    n = images.shape[0]
    if len(images.shape) != 3 or images.dtype != np.uint8:
        raise _format_error(path, expected, f"imgs is {images.dtype} {images.shape}")
    for member in (classes_member, values_member):
        if member.shape != (n, 6):
            raise _format_error(path, expected, f"{member.key} has shape {member.shape}, not ({n}, 6)")
    classes = classes_member.load().astype(np.int64)[:, 1:]
    values = values_member.load().astype(np.float64)[:, 1:]
    if n and ((classes < 0).any() or (classes >= np.asarray(DSPRITES_SIZES)).any()):
        raise _format_error(path, expected, f"latents_classes out of range for sizes {(1, *DSPRITES_SIZES)}")

    def to_images(block: np.ndarray) -> np.ndarray:
        if block.size and block.max() > 1:
            raise _format_error(path, expected, "imgs holds values above 1 (the published images are 0/1)")
        return _nchw(block * np.uint8(255))

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        for chunk in select_rows(images.blocks(), rows, chunk_size):
            yield to_images(chunk)

    return ImageSource(
        dataset="dsprites_npz",
        n_images=n,
        image_shape=(1, *images.shape[1:]),
        read_chunks=read_chunks,
        factor_names=DSPRITES_NAMES,
        factor_sizes=DSPRITES_SIZES,
        factor_classes=classes,
        factor_values=values,
        meta={"path": str(path), "format": "dsprites npz"},
    )


# ------------------------------------------------------------------------------------------------ 3dshapes


def shapes3d_h5(path: str | Path) -> ImageSource:
    """The published 3dshapes HDF5 file (module table): 6 factors on their published grids, 3 x 64 x 64."""
    import h5py

    expected = "the 3dshapes .h5 (datasets images uint8 (N, 64, 64, 3) and labels float64 (N, 6))"
    path = _existing(path, expected)
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in ("images", "labels") if key not in handle]
            if missing:
                raise _format_error(path, expected, f"has no dataset {missing[0]!r} (has {sorted(handle)})")
            shape, dtype = handle["images"].shape, handle["images"].dtype
            labels = np.asarray(handle["labels"][()], dtype=np.float64)
    except OSError as error:
        raise _format_error(path, expected, f"not a readable HDF5 file ({error})") from error
    if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
        raise _format_error(path, expected, f"images is {dtype} {shape}")
    if labels.shape != (shape[0], 6):
        raise _format_error(path, expected, f"labels has shape {labels.shape}, not ({shape[0]}, 6)")
    classes = np.empty(labels.shape, dtype=np.int64)
    for k, name in enumerate(SHAPES3D_NAMES):
        grid = SHAPES3D_GRID[name]
        nearest = np.abs(labels[:, k, None] - grid[None, :]).argmin(axis=1)
        off = np.abs(grid[nearest] - labels[:, k]) > 1e-3 * max(1.0, float(np.ptp(grid)))
        if off.any():
            raise _format_error(
                path,
                expected,
                f"label {name} = {float(labels[np.argmax(off), k])!r} is not on its "
                f"published grid {np.round(grid, 4).tolist()}",
            )
        classes[:, k] = nearest

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        try:
            with h5py.File(path, "r") as handle:
                yield from read_array_rows(handle["images"], rows, chunk_size, _nchw)
        except OSError as error:
            raise _format_error(path, expected, f"images unreadable ({error})") from error

    return ImageSource(
        dataset="shapes3d_h5",
        n_images=shape[0],
        image_shape=(3, shape[1], shape[2]),
        read_chunks=read_chunks,
        factor_names=SHAPES3D_NAMES,
        factor_sizes=tuple(len(SHAPES3D_GRID[n]) for n in SHAPES3D_NAMES),
        factor_classes=classes,
        factor_values=labels,
        meta={"path": str(path), "format": "3dshapes h5"},
    )


# ------------------------------------------------------------------------------------------------ SmallNORB


def _open_maybe_gzip(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_norb_header(stream: BinaryIO, path: Path, expected: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read the header of a NORB binary matrix: (dtype, shape); leaves ``stream`` at the data."""
    try:
        head = stream.read(8)
        if len(head) != 8:
            raise _format_error(path, expected, "truncated inside the header")
        magic, ndim = (int(v) for v in np.frombuffer(head, dtype="<i4"))
        if magic not in _NORB_DTYPES or not 1 <= ndim <= 8:
            raise _format_error(path, expected, f"not a NORB binary matrix (magic {magic:#x}, ndim {ndim})")
        dims_bytes = stream.read(4 * max(3, ndim))
        if len(dims_bytes) != 4 * max(3, ndim):
            raise _format_error(path, expected, "truncated inside the header")
    except (EOFError, OSError, gzip.BadGzipFile) as error:
        raise _format_error(path, expected, f"unreadable header ({error})") from error
    dims = tuple(int(v) for v in np.frombuffer(dims_bytes, dtype="<i4")[:ndim])
    return _NORB_DTYPES[magic], dims


def _check_size(path: Path, dims: tuple[int, ...], dtype: np.dtype, expected: str) -> None:
    """An uncompressed binary matrix must hold exactly its header and prod(dims) items (catches truncation early)."""
    if path.suffix == ".gz":
        return  # a gzip stream's length is known only once read; a short one fails while reading
    size = 8 + 4 * max(3, len(dims)) + int(np.prod(dims)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != size:
        raise _format_error(
            path,
            expected,
            f"{'truncated' if actual < size else 'too long'}: {actual} bytes, the header {dims} says {size}",
        )


def read_norb_matrix(path: Path, expected: str) -> np.ndarray:
    """A whole (small) NORB binary matrix: the cat and info files."""
    with _open_maybe_gzip(path) as stream:
        dtype, dims = read_norb_header(stream, path, expected)
        blocks = [block for _, block in _stream_rows(stream, dims[1:], dtype, dims[0], path, expected)]
    return np.concatenate(blocks) if blocks else np.zeros(dims, dtype=dtype)


def _norb_file(folder: Path, chunk: str, kind: str) -> Path | None:
    for suffix in (".mat", ".mat.gz"):
        candidate = folder / f"smallnorb-{chunk}-{kind}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def smallnorb(path: str | Path) -> ImageSource:
    """The SmallNORB binary matrices in a folder (module table): left camera, 4 factors, 1 x 96 x 96."""
    expected = (
        "a folder with the NYU smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat and/or "
        "smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat (optionally .gz) binary matrices"
    )
    folder = _existing(path, expected, kind="folder")
    parts = []
    for chunk in SMALLNORB_CHUNKS:
        files = {kind: _norb_file(folder, chunk, kind) for kind in ("dat", "cat", "info")}
        if not any(files.values()):
            continue
        missing = [f"smallnorb-{chunk}-{kind}.mat" for kind, file in files.items() if file is None]
        if missing:
            raise FileNotFoundError(f"{folder}: {missing[0]} is missing (the dat, cat and info files go together)")
        parts.append(files)
    if not parts:
        raise FileNotFoundError(f"{folder}: no SmallNORB files found; expected {expected}")

    headers = []
    categories, infos = [], []
    for files in parts:
        with _open_maybe_gzip(files["dat"]) as stream:
            dtype, dims = read_norb_header(stream, files["dat"], expected)
        if dtype != np.uint8 or len(dims) != 4 or dims[1] != 2:
            raise _format_error(files["dat"], expected, f"dat matrix is {dtype} {dims}, not uint8 (N, 2, H, W)")
        _check_size(files["dat"], dims, dtype, expected)
        category = read_norb_matrix(files["cat"], expected).reshape(-1)
        info = read_norb_matrix(files["info"], expected)
        if category.shape != (dims[0],) or info.shape != (dims[0], 4):
            raise _format_error(
                files["cat"], expected, f"cat {category.shape} / info {info.shape} do not match {dims[0]} images"
            )
        headers.append(dims)
        categories.append(category)
        infos.append(info)
    if len({dims[1:] for dims in headers}) != 1:
        raise _format_error(folder, expected, f"the chunks have different image shapes {headers}")
    category = np.concatenate(categories).astype(np.int64)
    info = np.concatenate(infos).astype(np.int64)
    classes = np.stack([category, info[:, 1], info[:, 2] // 2, info[:, 3]], axis=1)
    if (classes < 0).any() or (classes >= np.asarray(SMALLNORB_SIZES)).any() or (info[:, 2] % 2).any():
        raise _format_error(folder, expected, "category / info values out of the published ranges")
    values = np.stack([category, info[:, 1], info[:, 2] * 10.0, info[:, 3]], axis=1).astype(np.float64)
    starts = np.cumsum([0] + [dims[0] for dims in headers])

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        for files, dims, first, last in zip(parts, headers, starts[:-1], starts[1:]):
            chosen = rows[(rows >= first) & (rows < last)] - first
            if not len(chosen):
                continue
            with _open_maybe_gzip(files["dat"]) as stream:
                read_norb_header(stream, files["dat"], expected)
                blocks = _stream_rows(stream, dims[1:], np.dtype(np.uint8), dims[0], files["dat"], expected)
                for chunk in select_rows(blocks, chosen, chunk_size):
                    yield np.ascontiguousarray(chunk[:, :1])  # left camera

    return ImageSource(
        dataset="smallnorb",
        n_images=int(starts[-1]),
        image_shape=(1, *headers[0][2:]),
        read_chunks=read_chunks,
        factor_names=SMALLNORB_NAMES,
        factor_sizes=SMALLNORB_SIZES,
        factor_classes=classes,
        factor_values=values,
        nuisance={"instance": info[:, 0].astype(np.float64)},
        meta={
            "path": str(folder),
            "format": "smallnorb binary matrix",
            "camera": "left",
            "factor_values": "category, elevation class, azimuth in degrees, lighting",
        },
    )


# ------------------------------------------------------------------------------------------------ Cars3D


def cars3d(path: str | Path) -> ImageSource:
    """A folder of Cars3D .mat files (module table): 3 factors, 3 x 128 x 128 (fitted to 64 by default)."""
    import scipy.io

    expected = "a folder of Cars3D MATLAB v5 .mat files, each with 'im' uint8 (H, W, 3, 24 azimuths, 4 elevations)"
    folder = _existing(path, expected, kind="folder")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".mat" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no .mat files; expected {expected}")

    def load(file: Path) -> np.ndarray:
        try:
            im = scipy.io.loadmat(file, variable_names=["im"]).get("im")
        except (ValueError, TypeError, OSError, EOFError, KeyError, AssertionError) as error:
            raise _format_error(file, expected, f"not a readable MATLAB v5 file ({error})") from error
        if im is None:
            raise _format_error(file, expected, "has no variable 'im'")
        if im.dtype != np.uint8 or im.ndim != 5 or im.shape[2] != 3:
            raise _format_error(file, expected, f"'im' is {im.dtype} {im.shape}")
        return im

    first = load(files[0])  # the shape every car must share (checked as each is read)
    height, width, _, n_azimuth, n_elevation = first.shape
    per_car = n_azimuth * n_elevation
    sizes = (n_elevation, n_azimuth, len(files))
    # rows: car slowest, then azimuth, then elevation (disentanglement_lib's order within a car)
    car = np.repeat(np.arange(len(files)), per_car)
    azimuth = np.tile(np.repeat(np.arange(n_azimuth), n_elevation), len(files))
    elevation = np.tile(np.arange(n_elevation), n_azimuth * len(files))
    classes = np.stack([elevation, azimuth, car], axis=1).astype(np.int64)

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            for index in np.unique(rows // per_car):
                im = first if index == 0 else load(files[index])
                if im.shape != first.shape:
                    raise _format_error(
                        files[index], expected, f"'im' has shape {im.shape}, the first car {first.shape}"
                    )
                # (H, W, C, azimuth, elevation) -> (azimuth, elevation, C, H, W) -> rows of this car
                yield int(index) * per_car, im.transpose(3, 4, 2, 0, 1).reshape(per_car, 3, height, width)

        yield from select_rows(blocks(), rows, chunk_size)

    return ImageSource(
        dataset="cars3d",
        n_images=per_car * len(files),
        image_shape=(3, height, width),
        read_chunks=read_chunks,
        factor_names=CARS3D_NAMES,
        factor_sizes=sizes,
        factor_classes=classes,
        meta={"path": str(folder), "format": "cars3d mat", "objects": [p.name for p in files]},
    )


# ------------------------------------------------------------------------------------------------ MPI3D


def mpi3d_npz(path: str | Path, factor_sizes: Sequence[int] | None = None) -> ImageSource:
    """An MPI3D .npz (module table): 7 factors implied by the row order, 3 x 64 x 64."""
    expected = "an MPI3D .npz with 'images' uint8 (N, 64, 64, 3), rows in factor-grid order"
    path = _existing(path, expected)
    images = _NpyMember(path, "images", expected)
    if len(images.shape) != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise _format_error(path, expected, f"images is {images.dtype} {images.shape}")
    n = images.shape[0]
    if factor_sizes is None:
        known = {int(np.prod(s)): s for s in (MPI3D_SIZES, MPI3D_SIZES_FIRST_RELEASE)}
        if n not in known:
            raise _format_error(
                path,
                expected,
                f"holds {n} images, not {int(np.prod(MPI3D_SIZES))} "
                f"(grid {MPI3D_SIZES}) nor {int(np.prod(MPI3D_SIZES_FIRST_RELEASE))}; "
                "give factor_sizes for another grid",
            )
        factor_sizes = known[n]
    factor_sizes = tuple(int(s) for s in factor_sizes)
    if len(factor_sizes) != len(MPI3D_NAMES) or int(np.prod(factor_sizes)) != n:
        raise _format_error(
            path,
            expected,
            f"holds {n} images but factor_sizes {factor_sizes} (7 factors "
            f"{MPI3D_NAMES}) multiply to {int(np.prod(factor_sizes))}",
        )

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        for chunk in select_rows(images.blocks(), rows, chunk_size):
            yield _nchw(chunk)

    return ImageSource(
        dataset="mpi3d_npz",
        n_images=n,
        image_shape=(3, images.shape[1], images.shape[2]),
        read_chunks=read_chunks,
        factor_names=MPI3D_NAMES,
        factor_sizes=factor_sizes,
        factor_classes=_grid_classes(factor_sizes),
        meta={"path": str(path), "format": "mpi3d npz"},
    )


# ------------------------------------------------------------------------------------------------ IDX


def read_idx_header(stream: BinaryIO, path: Path, expected: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read an IDX header: (dtype, shape); leaves ``stream`` at the data."""
    try:
        head = stream.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 8:
            raise _format_error(
                path,
                expected,
                "not an IDX file (bad magic number)" if len(head) == 4 else "truncated inside the header",
            )
        dims_bytes = stream.read(4 * head[3])
        if len(dims_bytes) != 4 * head[3]:
            raise _format_error(path, expected, "truncated inside the header")
    except (EOFError, OSError, gzip.BadGzipFile) as error:
        raise _format_error(path, expected, f"unreadable header ({error})") from error
    return _IDX_DTYPES[head[2]], tuple(int(v) for v in np.frombuffer(dims_bytes, dtype=">i4"))


def read_idx(path: str | Path) -> np.ndarray:
    """A whole IDX(.gz) file as a numpy array (native byte order)."""
    expected = "an IDX file (MNIST format), optionally gzipped"
    path = _existing(path, expected)
    with _open_maybe_gzip(path) as stream:
        dtype, dims = read_idx_header(stream, path, expected)
        blocks = [block for _, block in _stream_rows(stream, dims[1:], dtype, dims[0], path, expected)]
    array = np.concatenate(blocks) if blocks else np.zeros(dims, dtype=dtype)
    return array.astype(dtype.newbyteorder("="), copy=False)


def mnist_idx(
    images: str | Path | Sequence[str | Path],
    labels: str | Path | Sequence[str | Path] | None = None,
    dataset: str = "mnist_idx",
    label_names: Sequence[str] | None = None,
) -> ImageSource:
    """MNIST-format IDX files (module table): images (N, 28, 28) uint8 and optional labels (N,) -> 1 x 28 x 28.

    ``images`` / ``labels`` may be lists of files (train and test), read one after the other. Without labels
    the dataset has no ground truth.
    """
    expected_images = "an IDX image file (uint8, 3 dimensions: N x H x W), optionally gzipped"
    expected_labels = "an IDX label file (uint8, 1 dimension: N), optionally gzipped"
    image_files = [_existing(p, expected_images) for p in ([images] if isinstance(images, (str, Path)) else images)]
    arrays = []
    for file in image_files:
        array = read_idx(file)
        if array.dtype != np.uint8 or array.ndim != 3:
            raise _format_error(file, expected_images, f"holds {array.dtype} of shape {array.shape}")
        arrays.append(array)
    if len({a.shape[1:] for a in arrays}) != 1:
        raise _format_error(image_files[0], expected_images, "the image files have different image shapes")
    stacked = np.concatenate(arrays)
    n = len(stacked)
    source_meta = {"path": ", ".join(map(str, image_files)), "format": "idx"}
    names: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    classes = None
    if labels is not None:
        label_files = [_existing(p, expected_labels) for p in ([labels] if isinstance(labels, (str, Path)) else labels)]
        label_arrays = []
        for file, image_array in zip(label_files, arrays):
            label = read_idx(file)
            if label.dtype != np.uint8 or label.ndim != 1 or len(label) != len(image_array):
                raise _format_error(
                    file, expected_labels, f"holds {label.dtype} of shape {label.shape} for {len(image_array)} images"
                )
            label_arrays.append(label)
        if len(label_files) != len(image_files):
            raise ValueError(f"{len(image_files)} image files but {len(label_files)} label files")
        classes = np.concatenate(label_arrays).astype(np.int64)[:, None]
        names, sizes = ("label",), (max(10, int(classes.max()) + 1 if n else 10),)
        source_meta["label_files"] = ", ".join(map(str, label_files))
        if label_names is not None:
            source_meta["label_names"] = list(label_names)

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        yield from read_array_rows(stacked, rows, chunk_size, _nchw)

    return ImageSource(
        dataset=dataset,
        n_images=n,
        image_shape=(1, *stacked.shape[1:]),
        read_chunks=read_chunks,
        factor_names=names,
        factor_sizes=sizes,
        factor_classes=classes,
        meta=source_meta,
    )


def idx_label_file(images: Path) -> Path | None:
    """The labels file beside an images file, by the MNIST naming (``-images-idx3-ubyte`` -> ``-labels-idx1-ubyte``)."""
    name = re.sub(r"images-idx3-ubyte", "labels-idx1-ubyte", images.name)
    candidate = images.with_name(name)
    return candidate if name != images.name and candidate.is_file() else None


# ------------------------------------------------------------------------------------------------ folder


def image_folder(path: str | Path, channels: int = 3) -> ImageSource:
    """A folder of image files (module table), read with pillow as RGB (``channels=3``) or grey (1); no factors."""
    from PIL import Image, UnidentifiedImageError

    expected = f"a folder of image files ({', '.join(IMAGE_SUFFIXES)})"
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    folder = _existing(path, expected, kind="folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no image files; expected {expected}")
    mode = "RGB" if channels == 3 else "L"

    def load(file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise _format_error(file, expected, f"not a readable image ({error})") from error
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    height, width = load(files[0]).shape[1:]

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), chunk_size):
            chunk = [fit(load(files[i])[None]) for i in rows[start : start + chunk_size]]
            yield np.concatenate(chunk)

    return ImageSource(
        dataset="image_folder",
        n_images=len(files),
        image_shape=(channels, height, width),
        read_chunks=read_chunks,
        meta={"path": str(folder), "format": "image folder", "files": len(files)},
    )


__all__ = [
    "cars3d",
    "dsprites_npz",
    "image_folder",
    "mnist_idx",
    "mpi3d_npz",
    "read_idx",
    "shapes3d_h5",
    "smallnorb",
]
