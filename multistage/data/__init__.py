"""Ground-truth datasets: images with the factors that generated them (see `base`), and their generators."""

from multistage.data.base import (
    DatasetFormatError,
    GroundTruthDataset,
    load_dataset,
    save_dataset,
    to_float,
)
from multistage.data.dsprites import make_dsprites

__all__ = [
    "DatasetFormatError",
    "GroundTruthDataset",
    "load_dataset",
    "make_dsprites",
    "save_dataset",
    "to_float",
]
