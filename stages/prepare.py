"""DVC stage ``prepare``: make the dataset named in ``params.yaml: prepare`` into ``data/prepared``.

Writes ``images.npy`` (memory-mappable uint8 N x C x H x W; the pendulum: float32 series N x 1 x T),
``factors.parquet`` (class indices, values, split, nuisance), any extra arrays and ``meta.json``, built in a
temporary folder and swapped in, so DVC never sees half a dataset. ``prepare.dataset`` picks the data
(procedural, bundled, or on disk in a published format); its options live in the sub-section of the same name,
validated (unknown keys and bad values are errors naming the key). Images reach stage one square, 32 or 64 px
(``prepare.image_size``, ``prepare.resize_mode``). Every dataset and its options: docs/datasets.md.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from stages.common import PARAMS_FILE, InputError, ParamsError, StageParams, StagingDirectory, load_section, run_cli
from stages.tracking import stage_run

OUTPUT = Path("data/prepared")

PROCEDURAL = ("dsprites", "pendulum")
BUNDLED = ("digits", "mnist5k", "fashion_mnist")
ON_DISK = ("dsprites_npz", "shapes3d_h5", "smallnorb", "cars3d", "mpi3d_npz", "mnist_idx", "image_folder")
DatasetName = Literal[
    "dsprites",
    "pendulum",
    "digits",
    "mnist5k",
    "fashion_mnist",
    "dsprites_npz",
    "shapes3d_h5",
    "smallnorb",
    "cars3d",
    "mpi3d_npz",
    "mnist_idx",
    "image_folder",
]


class TextureParams(StageParams):
    """Options of the textured variant (``multistage.data.dsprites.TextureOptions``, which re-validates them)."""

    colour_min: float = Field(0.5, ge=0.0, le=1.0)
    colour_max: float = Field(1.0, ge=0.0, le=1.0)
    grating_contrast: float = Field(0.5, ge=0.0, le=1.0)
    grating_frequency_min: float = Field(0.08, gt=0.0, le=0.5)
    grating_frequency_max: float = Field(0.2, gt=0.0, le=0.5)
    background_noise: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.grating_frequency_min > self.grating_frequency_max:
            raise ValueError("grating_frequency_min must not exceed grating_frequency_max")
        if self.colour_min > self.colour_max:
            raise ValueError("colour_min must not exceed colour_max")
        return self


class DSpritesParams(StageParams):
    """``prepare.dsprites``: which variant (``multistage.data.dsprites``); ``texture`` is read by textured only."""

    variant: Literal["binary", "textured", "color", "noisy", "scream"] = "textured"
    texture: TextureParams = TextureParams()


class PendulumParams(StageParams):
    """``prepare.pendulum``: the factor grid and integrator (``multistage.data.pendulum.PendulumOptions``)."""

    length_min: float = Field(1.0, gt=0.0)
    length_max: float = Field(3.0, gt=0.0)
    length_steps: int = Field(20, ge=1)
    damping_min: float = Field(0.1, ge=0.0)
    damping_max: float = Field(2.0, ge=0.0)
    damping_steps: int = Field(20, ge=1)
    mass_min: float = Field(0.1, gt=0.0)
    mass_max: float = Field(2.0, gt=0.0)
    mass_steps: int = Field(20, ge=1)
    initial_angle_min: float = Field(math.pi / 4, ge=-math.pi, le=math.pi)
    initial_angle_max: float = Field(math.pi / 4, ge=-math.pi, le=math.pi)
    initial_angle_steps: int = Field(1, ge=1)
    duration: float = Field(10.0, gt=0.0)
    series_length: int = Field(100, ge=2)
    substeps: int = Field(10, ge=1)
    gravity: float = Field(9.81, gt=0.0)


class LabelledParams(StageParams):
    """``prepare.digits`` / ``prepare.mnist5k``: ``labels: false`` drops the labels (no ground truth)."""

    labels: bool = True


class FashionMNISTParams(LabelledParams):
    """``prepare.fashion_mnist``: where the four IDX .gz files are (the Debian package's folder by default)."""

    root: str = "/usr/share/datasets/fashion-mnist"


class PathParams(StageParams):
    """An on-disk dataset: ``path`` to the file or folder in its published format (required when selected)."""

    path: str | None = None


class MPI3DParams(PathParams):
    """``prepare.mpi3d_npz``: ``factor_sizes`` (7 ints) for a grid other than the published ones."""

    factor_sizes: list[int] | None = Field(None, min_length=7, max_length=7)


class MnistIdxParams(StageParams):
    """``prepare.mnist_idx``: the IDX images file, and its labels file (``auto``: found beside it by name, if any;
    ``null``: none, so no ground truth)."""

    images: str | None = None
    labels: str | None = "auto"


class ImageFolderParams(PathParams):
    """``prepare.image_folder``: read as RGB (3) or grey (1)."""

    channels: Literal[1, 3] = 3


class PrepareParams(StageParams):
    dataset: DatasetName = "dsprites"
    n_images: int | None = Field(60000, gt=0)  # at most this many (a random subset); None = all
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    image_size: Literal[32, 64, None] = None
    resize_mode: Literal["auto", "pad", "resize"] = "auto"
    dsprites: DSpritesParams = DSpritesParams()
    pendulum: PendulumParams = PendulumParams()
    digits: LabelledParams = LabelledParams()
    mnist5k: LabelledParams = LabelledParams()
    fashion_mnist: FashionMNISTParams = FashionMNISTParams()
    dsprites_npz: PathParams = PathParams()
    shapes3d_h5: PathParams = PathParams()
    smallnorb: PathParams = PathParams()
    cars3d: PathParams = PathParams()
    mpi3d_npz: MPI3DParams = MPI3DParams()
    mnist_idx: MnistIdxParams = MnistIdxParams()
    image_folder: ImageFolderParams = ImageFolderParams()


def check_selection(params: PrepareParams) -> None:
    """The checks that depend on the chosen dataset (a ParamsError naming the key), before anything is written."""
    name = params.dataset
    options = getattr(params, name)
    if name in ON_DISK:
        key = "images" if name == "mnist_idx" else "path"
        if getattr(options, key) is None:
            raise ParamsError(
                f"prepare.{name}.{key} is required when prepare.dataset is {name!r}: the path of the "
                f"dataset in its published format (see multistage/data/ondisk.py)"
            )
    if name in ("dsprites", "pendulum") and params.resize_mode != "auto":
        raise ParamsError(f"prepare.resize_mode applies to stored images; {name} is generated at its own size")
    if name == "pendulum":
        if params.image_size is not None:
            raise ParamsError(
                "bad value for 'prepare.image_size': the pendulum is a time series (N x 1 x T), not "
                "images; leave it null"
            )
        pendulum_options(params)


def pendulum_options(params: PrepareParams):
    from multistage.data.pendulum import PendulumOptions

    try:
        return PendulumOptions(**params.pendulum.model_dump())
    except ValueError as error:
        raise ParamsError(f"bad value in 'prepare.pendulum': {error}") from None


def _source(params: PrepareParams):
    """The `ImageSource` of a bundled or on-disk dataset."""
    from multistage.data import bundled, ondisk

    name = params.dataset
    options = getattr(params, name)
    if name in ("digits", "mnist5k"):
        return getattr(bundled, name)(labels=options.labels)
    if name == "fashion_mnist":
        return bundled.fashion_mnist(options.root, labels=options.labels)
    if name == "mpi3d_npz":
        return ondisk.mpi3d_npz(options.path, options.factor_sizes)
    if name == "image_folder":
        return ondisk.image_folder(options.path, channels=options.channels)
    if name == "mnist_idx":
        images = Path(options.images).expanduser()
        labels = options.labels
        if labels == "auto":
            labels = ondisk.idx_label_file(images)
        return ondisk.mnist_idx(images, labels)
    return getattr(ondisk, name)(options.path)


def _make(params: PrepareParams, out_dir: Path, progress):
    from multistage.data import dsprites, pendulum, sources

    if params.dataset == "dsprites":
        options = params.dsprites.texture.model_dump() if params.dsprites.variant == "textured" else {}
        n_images = None if params.n_images is None else min(params.n_images, dsprites.GRID_SIZE)
        return dsprites.make_dsprites(
            out_dir,
            n_images=n_images,
            seed=params.seed,
            variant=params.dsprites.variant,
            test_fraction=params.test_fraction,
            image_size=params.image_size or dsprites.IMAGE_SIZE,
            progress=progress,
            **options,
        )
    if params.dataset == "pendulum":
        options = pendulum_options(params)
        total = math.prod(len(values) for values in options.factor_grid().values())
        n_images = None if params.n_images is None else min(params.n_images, total)
        return pendulum.make_pendulum(
            out_dir,
            n_images=n_images,
            seed=params.seed,
            test_fraction=params.test_fraction,
            options=options,
            progress=progress,
        )
    return sources.write_image_source(
        _source(params),
        out_dir,
        n_images=params.n_images,
        seed=params.seed,
        test_fraction=params.test_fraction,
        image_size=params.image_size,
        resize_mode=params.resize_mode,
        progress=progress,
    )


def run(params: PrepareParams, show_progress: bool = True) -> dict:
    from multistage.data.base import DatasetFormatError

    check_selection(params)
    started = time.perf_counter()
    with tqdm(total=params.n_images, desc=f"prepare {params.dataset}", unit="img", disable=not show_progress) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            with StagingDirectory(OUTPUT) as tmp:
                dataset = _make(params, tmp, progress)
                summary = {
                    "images": int(dataset.images.shape[0]),
                    "train_images": int(len(dataset.train_indices)),
                    "test_images": int(len(dataset.test_indices)),
                    "channels": int(dataset.images.shape[1]),
                    "image_size": int(dataset.images.shape[-1]),
                    "factors": len(dataset.factor_names),
                }
                del dataset  # close the memmap before the folder is renamed
        except (FileNotFoundError, DatasetFormatError) as error:
            raise InputError(f"prepare.dataset={params.dataset}: {error}") from None
    summary["seconds"] = time.perf_counter() - started
    return summary


def selected_params(params: PrepareParams) -> dict:
    """The params that shaped the data: the common keys and the chosen dataset's sub-section (for MLflow)."""
    every = params.model_dump()
    common = {
        key: value
        for key, value in every.items()
        if key not in PrepareParams.model_fields or not isinstance(value, dict)
    }
    return {**common, params.dataset: every.get(params.dataset, {})}


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(PrepareParams, "prepare", params_file)
    check_selection(params)
    with stage_run("prepare", selected_params(params)) as tracker:
        summary = run(params)
        tracker.log_metrics({f"prepare.{k}": v for k, v in summary.items()})
    series = params.dataset == "pendulum"
    shape = f"{summary['channels']} x {summary['image_size']}" + ("" if series else f" x {summary['image_size']}")
    print(
        f"prepare: {params.dataset}, {summary['images']} {'series' if series else 'images'} "
        f"({summary['train_images']} train), {shape}, {summary['factors']} factors, in {summary['seconds']:.1f} s"
    )
    return summary


if __name__ == "__main__":
    run_cli(main)
