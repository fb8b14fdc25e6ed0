"""DVC stage ``stage_two@<variant>``: train one stage-two variant (MS-VAE sec. 3.2, its baselines of sec. 4 and the
ablations of appendix L; the variants are ``multistage.models.registry.STAGE_TWO``).

    python -m stages.train_stage_two --variant msvae

A variant trains on what its ``conditioning`` says: the paired set's (x, y) rows, their stage-one codes c, or
the training images alone. Options: the shared keys of ``stage_two`` and the variant's sub-section
``stage_two.<variant>`` (its config's fields; residual_dim, steps, batch_size and learning_rate there override
the shared ones); fields a variant shares with stage one are copied from ``models/stage_one/model.pt`` unless set.
Outputs: ``models/stage_two/<variant>/`` (model.pt, curves.png), ``plots/stage_two_curves_<variant>.json``,
``metrics/stage_two_<variant>.json``; the checkpoint resumes after a kill when params, data, paired set and code
are the same. More: docs/stage-two.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, create_model, field_validator

from multistage.models.registry import STAGE_TWO
from multistage.models.stage_two.base import ConfigError
from multistage.models.stage_two.baselines import parameter_count
from stages.common import (
    PARAMS_FILE,
    InputError,
    ParamsError,
    StageParams,
    StagingDirectory,
    atomic_write_json,
    code_digest,
    file_digest,
    fingerprint,
    load_array,
    load_runtime,
    load_section,
    require_file,
    run_cli,
    setup_runtime,
    step_logger,
    training_summary,
)
from stages.stage_two_files import checkpoint_file, curves_file, metrics_file, output_folder
from stages.tracking import stage_run
from stages.train_stage_one import DATA, TrainingParams, data_fingerprint, load_data

PAIRS = Path("pairs")
STAGE_ONE_MODEL = Path("models/stage_one/model.pt")
DATA_FIELDS = ("image_channels", "image_size", "dataset_size")
OVERRIDABLE = ("residual_dim", "steps", "batch_size", "learning_rate")
VARIANTS = tuple(STAGE_TWO)


def _section_model(name: str, config_class: type) -> type[StageParams]:
    """The pydantic model of ``stage_two.<name>``: the config dataclass's own fields (types from it; the fields
    the stage fills from stage one default to None = "from stage one"), plus optional overrides of the shared
    training keys."""
    hints = typing.get_type_hints(config_class)
    inherited = set(getattr(STAGE_TWO[name][0], "stage_one_options", ()))
    own: dict[str, tuple] = {}
    for field in dataclasses.fields(config_class):
        if field.name in DATA_FIELDS or field.name == "residual_dim":
            continue
        if field.name in inherited or (name == "bigvae" and field.name == "target_parameters"):
            own[field.name] = (hints[field.name] | None, None)
        else:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            own[field.name] = (hints[field.name], default)
    own |= {
        "residual_dim": (int | None, Field(None, gt=0, le=256)),
        "steps": (int | None, Field(None, gt=0)),
        "batch_size": (int | None, Field(None, gt=1)),
        "learning_rate": (float | None, Field(None, gt=0.0, le=1.0)),
    }
    return create_model(f"{config_class.__name__.removesuffix('Config')}StageTwoParams", __base__=StageParams, **own)


SECTIONS = {name: _section_model(name, config_class) for name, (_, config_class) in STAGE_TWO.items()}


class SharedStageTwoParams(TrainingParams):
    """The keys every variant reads; each variant's own keys live in its sub-section."""

    variants: list[Literal[VARIANTS]] = ["msvae"]
    residual_dim: int = Field(10, gt=0, le=256)

    @field_validator("variants")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one variant")
        if len(set(value)) != len(value):
            raise ValueError(f"each variant at most once, got {value}")
        return value

    def section(self, variant: str) -> StageParams:
        return getattr(self, variant)

    def training(self, variant: str) -> dict:
        """steps, batch_size, learning_rate, residual_dim for ``variant`` (its overrides, else the shared ones),
        with seed, checkpoint_every, log_every."""
        section = self.section(variant)
        keys = ("steps", "batch_size", "learning_rate", "seed", "checkpoint_every", "log_every", "residual_dim")
        return {
            key: getattr(section, key, None) if getattr(section, key, None) is not None else getattr(self, key)
            for key in keys
        }

    def used(self, variant: str) -> dict:
        """What ``variant`` reads (fingerprint and MLflow params): its training keys and its sub-section."""
        return {"variant": variant} | self.training(variant) | {variant: self.section(variant).model_dump()}


StageTwoParams = create_model(
    "StageTwoParams",
    __base__=SharedStageTwoParams,
    **{name: (section, section()) for name, section in SECTIONS.items()},
)
StageTwoParams.__doc__ = (
    "params.yaml's ``stage_two``: the variants list, shared keys and one sub-section per "
    "variant (``stage_two.msvae.beta``...); every sub-section is validated."
)


def load_params(params_file: str | Path = PARAMS_FILE):
    return load_section(StageTwoParams, "stage_two", params_file)


# ------------------------------------------------------------------------------------------------- building
def model_options(params, variant: str, image_shape: tuple[int, ...], stage_one=None, dataset_size: int = 0) -> dict:
    """The keyword options of ``variant``'s config dataclass (see the module docstring for where each comes from)."""
    _, config_class = STAGE_TWO[variant]
    fields = {field.name for field in dataclasses.fields(config_class)}
    model_class = STAGE_TWO[variant][0]
    section = params.section(variant).model_dump()
    options = {k: v for k, v in section.items() if k in fields and k not in OVERRIDABLE and v is not None}
    options |= {
        "image_channels": int(image_shape[0]),
        "image_size": int(image_shape[-1]),
        "residual_dim": params.training(variant)["residual_dim"],
    }
    if "dataset_size" in fields:
        options["dataset_size"] = int(dataset_size)
    for name in getattr(model_class, "stage_one_options", ()):
        if name in options or stage_one is None:
            continue
        if name == "code_dim":
            options["code_dim"] = int(stage_one.code_dim)
        elif hasattr(stage_one.config, name):
            options[name] = getattr(stage_one.config, name)
    if variant == "bigvae" and options.get("target_parameters") is None and stage_one is not None:
        options["target_parameters"] = msvae_parameter_count(params, image_shape, stage_one)
    return options


def msvae_parameter_count(params, image_shape: tuple[int, ...], stage_one) -> int:
    """Parameters of MS-VAE as configured: the stage-one model plus ``stage_two.msvae``'s network."""
    msvae = build_variant(params, "msvae", image_shape)
    return parameter_count(stage_one) + parameter_count(msvae)


def build_variant(
    params, variant: str, image_shape: tuple[int, ...], stage_one=None, dataset_size: int = 0, source: str = PARAMS_FILE
):
    """The model of ``variant`` (a bad option is a ParamsError naming ``stage_two.<variant>.<key>``)."""
    model_class, config_class = STAGE_TWO[variant]
    try:
        config = config_class(**model_options(params, variant, image_shape, stage_one, dataset_size))
    except ConfigError as error:
        key = f"stage_two.{variant}.{error.field}" if error.field != "residual_dim" else "stage_two.residual_dim"
        raise ParamsError(f"{source}: bad value for '{key}': {error.message}") from None
    return model_class(config)


def load_pairs(n_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x_index (M,), y (M, C, H, W) float16 memmap, c (M, code_dim) of the paired set; a damaged file, or an index
    outside the ``n_images`` of the dataset, is an :class:`InputError` naming it."""
    x_index = load_array(PAIRS / "x_index.npy", "paired set index")
    y = load_array(PAIRS / "y.npy", "paired set y", mmap=True)
    c = load_array(PAIRS / "c.npy", "paired set c", mmap=True)
    if not len(x_index) == len(y) == len(c):
        raise InputError(f"{PAIRS}: x_index has {len(x_index)} rows, y {len(y)}, c {len(c)}; rerun the pairs stage")
    if x_index.ndim != 1 or not np.issubdtype(x_index.dtype, np.integer):
        raise InputError(
            f"{PAIRS / 'x_index.npy'}: expected a 1-d integer index, got {x_index.dtype} "
            f"{x_index.shape}; rerun the pairs stage"
        )
    if len(x_index) and (x_index.min() < 0 or x_index.max() >= n_images):
        raise InputError(
            f"{PAIRS / 'x_index.npy'}: indices outside the dataset's {n_images} images "
            f"({x_index.min()}..{x_index.max()}); rerun the pairs stage"
        )
    return x_index, y, c


# ------------------------------------------------------------------------------------------------- training
def run(params, variant: str, device: torch.device, tracker=None, show_progress: bool = True) -> dict:
    from multistage.data.base import to_float
    from multistage.models.files import save_model
    from multistage.train import LoopConfig, train
    from multistage.viz import plot_curves
    from stages.make_pairs import load_stage_one

    dataset = load_data(DATA)
    images = dataset.images
    train_indices = dataset.train_indices
    stage_one = load_stage_one(device)
    model = build_variant(params, variant, tuple(images.shape[1:]), stage_one, len(train_indices)).to(device)
    stage_one_parameters = parameter_count(stage_one)
    del stage_one
    training = params.training(variant)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=training["learning_rate"])
    conditioning = model.conditioning
    if conditioning == "none":
        n_items = len(train_indices)
        inputs = [file_digest(require_file(STAGE_ONE_MODEL, "stage-one model"))]

        def step_fn(batch: np.ndarray, step: int):
            x = to_float(images[np.sort(train_indices[batch])]).to(device)
            return model.objective(x, None, step)
    else:
        x_index, y_all, c_all = load_pairs(len(images))
        conditions = y_all if conditioning == "y" else c_all
        n_items = len(x_index)
        inputs = [file_digest(require_file(PAIRS / "meta.json", "paired set metadata"))]
        inputs += [file_digest(PAIRS / f"{name}.npy", algorithm="sha256") for name in ("x_index", "y", "c")]

        def step_fn(batch: np.ndarray, step: int):
            batch = np.sort(batch)
            x = to_float(images[x_index[batch]]).to(device)
            cond = torch.from_numpy(np.asarray(conditions[batch], dtype=np.float32)).to(device)
            return model.objective(x, cond, step)

    terms = ("loss", *model.logged_terms)
    loop = LoopConfig(
        steps=training["steps"],
        batch_size=training["batch_size"],
        seed=training["seed"],
        checkpoint_every=training["checkpoint_every"],
        log_every=training["log_every"],
        progress_keys=terms,
    )
    run_fingerprint = fingerprint(params.used(variant), data_fingerprint(DATA), code_digest("stage_two"), *inputs)
    result = train(
        model,
        optimizer,
        step_fn,
        n_items,
        loop,
        checkpoint_file(variant),
        run_fingerprint,
        callback=step_logger(tracker),
        description=f"stage two ({variant})",
        show_progress=show_progress,
        extra_modules=model.auxiliary_state(),
    )
    model.eval()
    prefix = f"stage_two.{variant}"
    summary = training_summary(prefix, result)
    summary[f"{prefix}.parameters"] = parameter_count(model)
    summary[f"{prefix}.parameters_with_stage_one"] = parameter_count(model) + stage_one_parameters
    folder = output_folder(variant)
    with StagingDirectory(folder) as tmp:
        save_model(
            tmp / "model.pt",
            "stage_two",
            variant,
            model,
            extra={"conditioning": conditioning, "stage_one_parameters": stage_one_parameters},
        )
        plot_curves(tmp / "curves.png", result.history, [t for t in terms if t != "phase"], f"stage two ({variant})")
    atomic_write_json(curves_file(variant), result.history)
    atomic_write_json(metrics_file(variant), summary)
    if tracker is not None:
        tracker.log_metrics(summary)
        tracker.log_artifact(folder / "model.pt", "checkpoints")
        tracker.log_artifact(folder / "curves.png", "figures")
    return summary


def main(variant: str | None = None, params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_params(params_file)
    variant = variant or params.variants[0]
    if variant not in STAGE_TWO:
        raise ParamsError(f"unknown stage-two variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run(f"stage_two@{variant}", params.used(variant) | {"device": str(device)}) as tracker:
        tracker.set_tags({"device": str(device), "stage_two.variant": variant})
        summary = run(params, variant, device, tracker=tracker)
    prefix = f"stage_two.{variant}"
    print(
        f"stage two ({variant}): {params.training(variant)['steps']} steps, "
        f"{summary[f'{prefix}.images_per_second']:.0f} images/s, final loss "
        f"{summary.get(f'{prefix}.loss', float('nan')):.2f}, {summary[f'{prefix}.parameters']} parameters"
    )
    return summary


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=None, help="a name of stage_two.variants (default: the first listed)")
    parser.add_argument("--params", default=PARAMS_FILE)
    arguments = parser.parse_args()
    run_cli(lambda: main(arguments.variant, arguments.params))


if __name__ == "__main__":
    cli()
