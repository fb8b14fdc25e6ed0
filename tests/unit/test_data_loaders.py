"""On-disk loaders on tiny files written in exactly their published formats, the bundled sets, image fitting,
and the prepare stage's choice of dataset (issue 3, acceptance 2)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from multistage.data import bundled, ondisk
from multistage.data.base import DatasetFormatError, load_dataset
from multistage.data.dsprites import render_masks
from multistage.data.sources import fit_images, target_size, write_image_source
from stages.common import InputError, ParamsError, validate_section

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_maybe_gzipped(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in .gz (as the published files may be)."""
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def prepared(source, tmp_path, **options):
    return write_image_source(source, tmp_path / "out", seed=0, test_fraction=0.25, **options)


# ------------------------------------------------------------------------------------------------ dSprites npz


def write_dsprites_npz(path: Path) -> np.ndarray:
    """The published layout: imgs 0/1, latents over (color, shape, scale, orientation, posX, posY), metadata."""
    classes = np.array([[0, 0, 5, 0, 3, 4], [0, 1, 2, 10, 31, 0], [0, 2, 0, 39, 16, 16], [0, 2, 5, 20, 0, 31]])
    values = np.column_stack(
        [
            np.ones(4),
            classes[:, 1] + 1.0,
            0.5 + 0.1 * classes[:, 2],
            classes[:, 3] * 2 * np.pi / 39,
            classes[:, 4] / 31,
            classes[:, 5] / 31,
        ]
    )
    metadata = np.array({"latents_sizes": np.array([1, 3, 6, 40, 32, 32]), "title": "dSprites"}, dtype=object)
    np.savez_compressed(
        path, imgs=render_masks(classes[:, 1:]), latents_classes=classes, latents_values=values, metadata=metadata
    )
    return classes


def test_dsprites_npz(tmp_path):
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    classes = write_dsprites_npz(path)
    source = ondisk.dsprites_npz(path)
    assert source.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert source.factor_sizes == (3, 6, 40, 32, 32) and source.n_images == 4
    dataset = prepared(source, tmp_path)
    np.testing.assert_array_equal(dataset.factor_classes, classes[:, 1:])
    np.testing.assert_array_equal(np.asarray(dataset.images)[:, 0], render_masks(classes[:, 1:]) * 255)
    assert dataset.meta["observations"] == "lookup" and dataset.meta["format"] == "dsprites npz"
    again = dataset.observations_from_factors(classes[2:3, 1:], 0)
    np.testing.assert_array_equal(again, np.asarray(dataset.images[2:3]))

    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz: no such file; expected the dSprites \.npz"):
        ondisk.dsprites_npz(tmp_path / "nowhere.npz")
    truncate(path)
    with pytest.raises(DatasetFormatError, match=r"_64x64\.npz: not a readable \.npz.*expected the dSprites"):
        ondisk.dsprites_npz(path)
    np.savez(path, imgs=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(DatasetFormatError, match="has no array 'latents_classes'"):
        ondisk.dsprites_npz(path)


# ------------------------------------------------------------------------------------------------ 3dshapes


def test_shapes3d_h5(tmp_path):
    path = tmp_path / "3dshapes.h5"
    classes = np.array([[0, 9, 3, 7, 2, 14], [5, 0, 9, 0, 3, 0], [1, 1, 1, 1, 1, 7]])
    grid = ondisk.SHAPES3D_GRID
    labels = np.stack([grid[name][classes[:, k]] for k, name in enumerate(ondisk.SHAPES3D_NAMES)], axis=1)
    images = np.zeros((3, 64, 64, 3), np.uint8)
    images[:, :, :, 0] = (np.arange(3) * 50)[:, None, None]  # red = 0, 50, 100
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images)
        handle.create_dataset("labels", data=labels)
    source = ondisk.shapes3d_h5(path)
    assert source.factor_sizes == (10, 10, 10, 8, 4, 15)
    dataset = prepared(source, tmp_path)
    np.testing.assert_array_equal(dataset.factor_classes, classes)
    np.testing.assert_allclose(dataset.factor_values, labels)
    assert dataset.images.shape == (3, 3, 64, 64)
    assert np.asarray(dataset.images)[:, 0, 10, 10].tolist() == [0, 50, 100] and dataset.images[:, 1].max() == 0

    with pytest.raises(FileNotFoundError, match="missing.h5: no such file; expected the 3dshapes"):
        ondisk.shapes3d_h5(tmp_path / "missing.h5")
    truncate(path)
    with pytest.raises(DatasetFormatError, match=r"3dshapes\.h5: not a readable HDF5 file.*expected the 3dshapes"):
        ondisk.shapes3d_h5(path)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images)
        handle.create_dataset("labels", data=labels + 0.05)
    with pytest.raises(DatasetFormatError, match="label floor_hue = 0.05 is not on its published grid"):
        ondisk.shapes3d_h5(path)


# ------------------------------------------------------------------------------------------------ SmallNORB


def write_norb_matrix(path: Path, array: np.ndarray) -> None:
    """The NYU binary matrix: int32 magic, int32 ndim, max(3, ndim) int32 dims (unused ones 1), data."""
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = struct.pack(f"<{2 + len(dims)}i", magic, array.ndim, *dims)
    data = header + array.astype(array.dtype.newbyteorder("<")).tobytes()
    write_maybe_gzipped(path, data)


def test_smallnorb(tmp_path):
    rng = np.random.default_rng(0)
    chunks = {"5x46789x9x18x6x2x96x96-training": (6, ".mat"), "5x01235x9x18x6x2x96x96-testing": (4, ".mat.gz")}
    expected_classes, left_images = [], []
    for chunk, (n, suffix) in chunks.items():
        stereo = rng.integers(0, 256, size=(n, 2, 96, 96), dtype=np.uint8)
        category = rng.integers(0, 5, n).astype(np.int32)
        info = np.stack(
            [rng.integers(0, 10, n), rng.integers(0, 9, n), 2 * rng.integers(0, 18, n), rng.integers(0, 6, n)], axis=1
        ).astype(np.int32)
        write_norb_matrix(tmp_path / f"smallnorb-{chunk}-dat{suffix}", stereo)
        write_norb_matrix(tmp_path / f"smallnorb-{chunk}-cat{suffix}", category)
        write_norb_matrix(tmp_path / f"smallnorb-{chunk}-info{suffix}", info)
        expected_classes.append(np.stack([category, info[:, 1], info[:, 2] // 2, info[:, 3]], axis=1))
        left_images.append(stereo[:, :1])
    source = ondisk.smallnorb(tmp_path)
    assert source.n_images == 10 and source.image_shape == (1, 96, 96)
    np.testing.assert_array_equal(source.factor_classes, np.concatenate(expected_classes))
    chunks_read = list(source.read_chunks(np.array([0, 5, 6, 9]), 3, lambda batch: batch))
    np.testing.assert_array_equal(np.concatenate(chunks_read), np.concatenate(left_images)[[0, 5, 6, 9]])
    dataset = prepared(source, tmp_path)
    assert dataset.images.shape == (10, 1, 64, 64) and sorted(dataset.nuisance) == ["instance"]

    with pytest.raises(FileNotFoundError, match="no SmallNORB files found"):
        ondisk.smallnorb(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="elsewhere: no such folder"):
        ondisk.smallnorb(tmp_path / "elsewhere")
    truncate(tmp_path / "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat")
    with pytest.raises(DatasetFormatError, match=r"training-dat\.mat: truncated.*expected a folder with the NYU"):
        ondisk.smallnorb(tmp_path)
    (tmp_path / "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat").unlink()
    with pytest.raises(FileNotFoundError, match="training-cat.mat is missing"):
        ondisk.smallnorb(tmp_path)


# ------------------------------------------------------------------------------------------------ Cars3D


def test_cars3d(tmp_path):
    folder = tmp_path / "cars"
    folder.mkdir()
    for car in range(2):  # each image is one grey level: 100 car + 4 azimuth + elevation
        level = 100 * car + 4 * np.arange(24)[:, None] + np.arange(4)[None, :]
        im = np.broadcast_to(level.astype(np.uint8), (128, 128, 3, 24, 4))
        scipy.io.savemat(folder / f"car_{car + 1:03d}_mesh.mat", {"im": np.ascontiguousarray(im)}, do_compression=True)
    source = ondisk.cars3d(folder)
    assert source.factor_sizes == (4, 24, 2) and source.n_images == 192
    dataset = prepared(source, tmp_path, n_images=40)
    assert dataset.images.shape == (40, 3, 64, 64)
    elevation, azimuth, car = dataset.factor_classes.T
    levels = np.asarray(dataset.images)[:, :, 5, 7]
    np.testing.assert_array_equal(levels, np.repeat((100 * car + 4 * azimuth + elevation)[:, None], 3, axis=1))

    with pytest.raises(FileNotFoundError, match="no .mat files"):
        ondisk.cars3d(tmp_path)
    with pytest.raises(FileNotFoundError, match="data/cars: no such folder; expected a folder of Cars3D MATLAB v5"):
        ondisk.cars3d(tmp_path / "data" / "cars")
    truncate(folder / "car_002_mesh.mat", keep=0.3)
    with pytest.raises(DatasetFormatError, match=r"car_002_mesh\.mat: not a readable MATLAB v5 file.*expected"):
        prepared(ondisk.cars3d(folder), tmp_path)
    scipy.io.savemat(folder / "car_002_mesh.mat", {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DatasetFormatError, match="has no variable 'im'"):
        prepared(ondisk.cars3d(folder), tmp_path)


# ------------------------------------------------------------------------------------------------ MPI3D


def test_mpi3d_npz(tmp_path):
    path = tmp_path / "mpi3d_toy.npz"
    sizes = (2, 1, 1, 1, 1, 2, 3)
    images = np.zeros((12, 64, 64, 3), np.uint8)
    images[..., 2] = np.arange(12)[:, None, None] * 20  # blue = 20 * row
    np.savez(path, images=images)
    with pytest.raises(DatasetFormatError, match=r"holds 12 images, not 1036800 .*give factor_sizes"):
        ondisk.mpi3d_npz(path)
    source = ondisk.mpi3d_npz(path, factor_sizes=sizes)
    dataset = prepared(source, tmp_path)
    rows = np.ravel_multi_index(dataset.factor_classes.T, sizes)
    np.testing.assert_array_equal(rows, np.arange(12))  # the row order is the grid order
    assert np.asarray(dataset.images)[:, 2, 0, 0].tolist() == (np.arange(12) * 20).tolist()
    with pytest.raises(DatasetFormatError, match="multiply to 8"):
        ondisk.mpi3d_npz(path, factor_sizes=(2, 1, 1, 1, 1, 2, 2))
    truncate(path)
    with pytest.raises(DatasetFormatError, match=r"mpi3d_toy\.npz: not a readable \.npz.*expected an MPI3D"):
        ondisk.mpi3d_npz(path, factor_sizes=sizes)
    with pytest.raises(FileNotFoundError, match="no such file; expected an MPI3D"):
        ondisk.mpi3d_npz(tmp_path / "mpi3d_real.npz")


# ------------------------------------------------------------------------------------------------ IDX


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0, 0, type 0x08 (uint8), ndim, big-endian int32 sizes, the data."""
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    write_maybe_gzipped(path, data)


def test_mnist_idx_gz_and_raw_and_padding_to_32(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    assert ondisk.idx_label_file(tmp_path / "train-images-idx3-ubyte.gz") == tmp_path / "train-labels-idx1-ubyte.gz"
    np.testing.assert_array_equal(ondisk.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    source = ondisk.mnist_idx(tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    dataset = prepared(source, tmp_path)
    assert dataset.images.shape == (7, 1, 32, 32) and dataset.factor_names == ("label",)
    np.testing.assert_array_equal(dataset.factor_classes[:, 0], labels)
    stored = np.asarray(dataset.images)[:, 0]
    np.testing.assert_array_equal(stored[:, 2:30, 2:30], images)  # padded by 2 on every side (auto: 28 -> 32)
    assert stored[:, :2].max() == 0 and stored[:, :, 30:].max() == 0
    resized = prepared(source, tmp_path, resize_mode="resize")
    assert resized.images.shape == (7, 1, 32, 32) and resized.images[:, :, 0].max() > 0

    raw = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(raw, images)
    assert not ondisk.mnist_idx(raw).factor_names  # no labels file: no ground truth
    truncate(raw, keep=0.6)
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: truncated.*expected an IDX file"):
        ondisk.mnist_idx(raw)
    raw.write_bytes(b"\x00\x01\x08\x03" + bytes(20))
    with pytest.raises(DatasetFormatError, match="bad magic number"):
        ondisk.mnist_idx(raw)
    truncate(tmp_path / "train-images-idx3-ubyte.gz", keep=0.5)
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz: .*expected an IDX file"):
        ondisk.mnist_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte: no such file; expected an IDX image file"):
        ondisk.mnist_idx(tmp_path / "nope-idx3-ubyte")


# ------------------------------------------------------------------------------------------------ folder


def test_image_folder_has_no_ground_truth(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 40), (200, 10, 10)).save(folder / "a.png")  # 50 wide, 40 tall: cropped to 40 x 40
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "sub" / "b.jpg")
    Image.new("L", (90, 90), 128).save(folder / "c.bmp")
    (folder / "notes.txt").write_text("not an image")
    source = ondisk.image_folder(folder)
    dataset = prepared(source, tmp_path)
    assert dataset.images.shape == (3, 3, 64, 64) and not dataset.has_ground_truth
    assert dataset.meta["files"] == 3 and "observations" not in dataset.meta
    means = np.asarray(dataset.images).mean(axis=(2, 3))
    np.testing.assert_allclose(means[0], [200, 10, 10], atol=1)  # a.png (path order: a, c, sub/b)
    np.testing.assert_allclose(means[1], [128, 128, 128], atol=1)
    assert prepared(ondisk.image_folder(folder, channels=1), tmp_path).images.shape == (3, 1, 64, 64)
    truncate(folder / "a.png", keep=0.3)
    with pytest.raises(DatasetFormatError, match=r"a\.png: not a readable image"):
        prepared(ondisk.image_folder(folder), tmp_path)
    with pytest.raises(FileNotFoundError, match="no image files"):
        ondisk.image_folder(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="celeba: no such folder; expected a folder of image files"):
        ondisk.image_folder(tmp_path / "celeba")


# ------------------------------------------------------------------------------------------------ bundled


def test_bundled_digits_and_mnist5k():
    digits = bundled.digits()
    assert digits.n_images == 1797 and digits.image_shape == (1, 8, 8)
    assert np.bincount(digits.factor_classes[:, 0]).min() >= 170
    first = next(digits.read_chunks(np.arange(3), 3, lambda batch: batch))
    assert first.dtype == np.uint8 and first.max() == 255  # grey levels 0..16 scaled to 0..255
    assert not bundled.digits(labels=False).factor_names
    mnist = bundled.mnist5k()
    assert mnist.n_images == 5000 and mnist.image_shape == (1, 28, 28)
    assert np.bincount(mnist.factor_classes[:, 0]).tolist() == [500] * 10


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_bundled_fashion_mnist(tmp_path):
    source = bundled.fashion_mnist()
    assert source.n_images == 70_000 and source.meta["label_names"][0] == "T-shirt/top"
    assert np.bincount(source.factor_classes[:, 0]).tolist() == [7000] * 10


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(bundled.FashionMNISTMissing, match="make fashion-mnist.*apt-get install -y dataset-fashion"):
        bundled.fashion_mnist(tmp_path)


def test_fit_images():
    assert target_size(8, 8, None) == 32 and target_size(28, 28, None) == 32 and target_size(96, 96, None) == 64
    assert target_size(64, 64, None) == 64 and target_size(218, 178, None) == 64 and target_size(8, 8, 64) == 64
    with pytest.raises(ValueError, match="image_size"):
        target_size(8, 8, 48)
    constant = np.full((2, 1, 8, 8), 77, np.uint8)
    np.testing.assert_array_equal(fit_images(constant, 32), np.full((2, 1, 32, 32), 77))  # resampled: 8 -> 32
    tall = np.zeros((1, 3, 10, 6), np.uint8)
    tall[:, :, 2:8] = 9  # the centre 6 x 6 square of a 6-wide, 10-tall image
    np.testing.assert_array_equal(fit_images(tall, 32, "pad")[:, :, 13:19, 13:19], np.full((1, 3, 6, 6), 9))
    assert fit_images(tall, 32, "pad").sum() == 9 * 3 * 36


# ------------------------------------------------------------------------------------------------ the stage


def test_prepare_stage_selects_and_checks_the_dataset(tmp_path, monkeypatch):
    from stages import prepare

    def params(**raw):
        return validate_section(prepare.PrepareParams, raw, "prepare")

    monkeypatch.chdir(tmp_path)
    summary = prepare.run(params(dataset="digits", n_images=50, resize_mode="pad", image_size=64), show_progress=False)
    assert summary["images"] == 50 and summary["image_size"] == 64 and summary["factors"] == 1
    assert load_dataset(tmp_path / "data" / "prepared").meta["dataset"] == "digits"

    with pytest.raises(ParamsError, match=r"prepare\.cars3d\.path is required when prepare\.dataset is 'cars3d'"):
        prepare.run(params(dataset="cars3d"), show_progress=False)
    with pytest.raises(ParamsError, match="prepare.image_size.*time series"):
        prepare.run(params(dataset="pendulum", image_size=32), show_progress=False)
    with pytest.raises(ParamsError, match="prepare.resize_mode applies to stored images"):
        prepare.run(params(dataset="dsprites", image_size=32, resize_mode="pad"), show_progress=False)
    with pytest.raises(ParamsError, match=r"prepare\.pendulum.*raise substeps"):
        prepare.run(params(dataset="pendulum", pendulum={"substeps": 1, "damping_max": 60.0}), show_progress=False)
    with pytest.raises(ParamsError, match=r"unknown key 'prepare\.shapes3d_h5\.file'; allowed keys: path"):
        params(dataset="shapes3d_h5", shapes3d_h5={"file": "x.h5"})
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    with pytest.raises(InputError, match=r"prepare\.dataset=shapes3d_h5: .*nowhere\.h5: no such file"):
        prepare.run(
            params(dataset="shapes3d_h5", shapes3d_h5={"path": str(tmp_path / "nowhere.h5")}), show_progress=False
        )
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(40))
    with pytest.raises(InputError, match=r"bad\.h5: not a readable HDF5 file"):
        prepare.run(params(dataset="shapes3d_h5", shapes3d_h5={"path": str(tmp_path / "bad.h5")}), show_progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before  # nothing half-written
    assert load_dataset(tmp_path / "data" / "prepared").meta["dataset"] == "digits"  # the old data intact
