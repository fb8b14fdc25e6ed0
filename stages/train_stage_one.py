"""DVC stage ``stage_one``: train the disentangled model C -> Y (beta-TCVAE by default) on the training split.

The model is ``stage_one.model`` (any name in ``multistage.models.registry.STAGE_ONE``: betavae, annealedvae,
betatcvae, dipvae, jointvae, factorvae); the shared keys (latent_dim, architecture, likelihood,
gaussian_variance, steps, batch_size, ...) sit in ``stage_one`` and each model's own keys in its sub-section
``stage_one.<model>`` (e.g. ``dvc exp run -S stage_one.betatcvae.beta=4``). Every key is validated: an unknown key,
a bad value, or an option the chosen likelihood does not use is one error naming it, before anything is written.

Outputs: ``models/stage_one/model.pt`` (self-describing model file), ``models/stage_one/codes.parquet`` (encoder
mean and log-variance of every image, JointVAE's discrete probabilities, with its split),
``plots/stage_one_curves.json`` (per-step loss terms for ``dvc plots``), ``metrics/stage_one.json`` (final terms,
the decoder variance of a learned Gaussian likelihood, throughput, KL per unit over the whole data).
The training checkpoint lives in
``checkpoints/`` (not a DVC output, so it survives DVC clearing outputs before a rerun); a rerun after a kill
resumes from it when it was made for the same params, the same data (every byte of ``images.npy``) and the same
code (the files under this stage's code deps in dvc.yaml); otherwise it is set aside as ``.stale`` and training
starts at step 0.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field, create_model

from multistage.metrics.clustering import collapse_message, discrete_information
from multistage.models.registry import STAGE_ONE
from multistage.models.stage_one.base import ConfigError, StageOneConfig
from multistage.nn.likelihoods import LIKELIHOODS
from multistage.nn.networks import ARCHITECTURES
from multistage.nn.precision import resolve_precision, train_networks_in_bf16
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
    load_runtime,
    load_section,
    require_file,
    run_cli,
    setup_runtime,
    step_logger,
    training_summary,
)
from stages.tracking import stage_run

DATA = Path("data/prepared")
OUTPUT = Path("models/stage_one")
CURVES = Path("plots/stage_one_curves.json")
METRICS = Path("metrics/stage_one.json")
CHECKPOINT = Path("checkpoints/stage_one.pt")
DATA_FIELDS = ("image_channels", "image_size", "series_length", "dataset_size")
SHARED_CONFIG_FIELDS = tuple(
    field.name for field in dataclasses.fields(StageOneConfig) if field.name not in DATA_FIELDS
)


class TrainingParams(StageParams):
    steps: int = Field(3000, gt=0)
    batch_size: int = Field(256, gt=1)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    seed: int = 0
    checkpoint_every: int = Field(250, gt=0)
    log_every: int = Field(25, gt=0)


class SharedStageOneParams(TrainingParams):
    """The keys every stage-one model reads; each model's own keys live in its sub-section (below)."""

    model: Literal[tuple(STAGE_ONE)] = "betatcvae"
    latent_dim: int = Field(10, gt=0, le=512)
    architecture: Literal[ARCHITECTURES] = "auto"
    likelihood: Literal[LIKELIHOODS] = "bernoulli"
    gaussian_variance: float | None = Field(None, gt=0.0)  # Gaussian likelihoods only (fixed / initial value)

    def section(self) -> StageParams:
        """The chosen model's sub-section (``stage_one.<model>``)."""
        return getattr(self, self.model)

    def used(self) -> dict:
        """What the chosen model reads: the shared keys and its own sub-section (for fingerprints and MLflow)."""
        shared = {k: v for k, v in self.model_dump().items() if k not in STAGE_ONE}
        return shared | {self.model: self.section().model_dump()}


def _section_model(name: str, config_class: type) -> type[StageParams]:
    """The pydantic model of ``stage_one.<name>``: the config dataclass's own fields (types and defaults taken from
    it, the one source of truth); value ranges are checked by the dataclass (``check_model_options``)."""
    hints = typing.get_type_hints(config_class)
    own = {
        field.name: (hints[field.name], field.default)
        for field in dataclasses.fields(config_class)
        if field.name not in SHARED_CONFIG_FIELDS and field.name not in DATA_FIELDS
    }
    return create_model(f"{config_class.__name__.removesuffix('Config')}Params", __base__=StageParams, **own)


SECTIONS = {name: _section_model(name, config_class) for name, (_, config_class) in STAGE_ONE.items()}
StageOneParams = create_model(
    "StageOneParams",
    __base__=SharedStageOneParams,
    **{name: (section, section()) for name, section in SECTIONS.items()},
)
StageOneParams.__doc__ = (
    "params.yaml's ``stage_one``: shared keys plus one sub-section per model (``stage_one.betatcvae.beta``...). "
    "Every sub-section is validated; the chosen model's is used, the others may stay (so that "
    "``dvc exp run -S stage_one.model=dipvae`` works)."
)


def model_options(params, data_options: dict | None = None) -> dict:
    """Keyword options of the chosen model's config dataclass: shared keys, its sub-section and the data's shape
    (``data_options``: image_channels, image_size, series_length, dataset_size)."""
    _, config_class = STAGE_ONE[params.model]
    fields = {field.name for field in dataclasses.fields(config_class)}
    options = {k: getattr(params, k) for k in SHARED_CONFIG_FIELDS}
    options |= params.section().model_dump()
    options |= {k: v for k, v in (data_options or {}).items() if k in fields}
    return options


def _placeholder_data(architecture: str) -> dict:
    """A data shape that fits ``architecture``, for checking options before the data is read."""
    if architecture == "series_mlp":
        return {"image_channels": 1, "series_length": 100}
    return {"image_channels": 1, "image_size": 32 if architecture == "conv32" else 64}


def check_model_options(params, data_options: dict | None = None, source: str = PARAMS_FILE):
    """Build the config dataclass of every sub-section (the chosen model's with the real ``data_options`` when
    given) so that a bad value anywhere is one :class:`ParamsError` naming ``stage_one.<model>.<key>``; returns
    the chosen model's config."""
    chosen = None
    for name, (_, config_class) in STAGE_ONE.items():
        options = model_options(
            params.model_copy(update={"model": name}),
            data_options if name == params.model and data_options else _placeholder_data(params.architecture),
        )
        try:
            config = config_class(**options)
        except ConfigError as error:
            key = (
                f"stage_one.{error.field}" if error.field in SHARED_CONFIG_FIELDS else f"stage_one.{name}.{error.field}"
            )
            if error.field in DATA_FIELDS:
                key = "stage_one.architecture (for this data)"
            raise ParamsError(f"{source}: bad value for '{key}': {error.message}") from None
        if name == params.model:
            chosen = config
    return chosen


def load_params(params_file: str | Path = PARAMS_FILE):
    params = load_section(StageOneParams, "stage_one", params_file)
    check_model_options(params, source=str(params_file))
    return params


def data_fingerprint(data: Path) -> str:
    """The prepared data's contents: metadata, factor table and every byte of images.npy."""
    return fingerprint(
        file_digest(require_file(data / "meta.json", "dataset metadata")),
        file_digest(require_file(data / "factors.parquet", "factor table")),
        file_digest(require_file(data / "images.npy", "dataset images"), algorithm="sha256"),
    )


def load_data(data: Path):
    from multistage.data.base import load_dataset

    require_file(data / "images.npy", "dataset images")
    try:
        return load_dataset(data)
    except (ValueError, OSError, KeyError) as error:
        raise InputError(f"dataset at {data} cannot be loaded: {error}") from error


def encode_all(model, images: np.ndarray, device, batch_size: int = 512) -> dict[str, np.ndarray]:
    """The posterior parameters of every row: mu, logvar (N, latent_dim) and, for discrete codes, the
    probabilities ``alpha`` (N, sum K_i)."""
    from multistage.data.base import to_float

    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            posterior = model.posterior(to_float(images[start : start + batch_size]).to(device))
            if "logits" in posterior:
                blocks = posterior.pop("logits").split(list(model.discrete_dims), dim=1)
                posterior["alpha"] = torch.cat([torch.softmax(block, dim=1) for block in blocks], dim=1)
            for key, value in posterior.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def write_codes(path: Path, posterior: dict[str, np.ndarray], split: np.ndarray, model) -> None:
    """codes.parquet: index, split, mu_<j>, logvar_<j> and (JointVAE) alpha_<i>_<k> = q(c_i = k | x)."""
    mu, logvar = posterior["mu"], posterior["logvar"]
    columns = {"index": np.arange(len(mu)), "split": split}
    columns |= {f"mu_{j}": mu[:, j] for j in range(mu.shape[1])}
    columns |= {f"logvar_{j}": logvar[:, j] for j in range(logvar.shape[1])}
    if "alpha" in posterior:
        names = [(i, k) for i, size in enumerate(model.discrete_dims) for k in range(size)]
        columns |= {f"alpha_{i}_{k}": posterior["alpha"][:, n] for n, (i, k) in enumerate(names)}
    pq.write_table(pa.table(columns), path)


def data_options(dataset) -> dict:
    """The config options the data fixes: channels and size of (N, C, S, S) images, or the length of (N, C, T)
    float series, and N (the training images; beta-TCVAE's estimators need it)."""
    shape = tuple(int(s) for s in dataset.images.shape[1:])
    options = {"image_channels": shape[0], "dataset_size": int(len(dataset.train_indices))}
    if len(shape) == 2:
        return options | {"series_length": shape[1]}
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InputError(
            f"{DATA}: stage one needs (N, C, S, S) images or (N, C, T) series, got {tuple(dataset.images.shape)}"
        )
    return options | {"image_size": shape[1]}


def build_model(params, dataset, device: torch.device, precision: str = "fp32"):
    """The chosen model for this data (a bad option is a ParamsError naming its key), on ``device``. On CPU image
    models are put in channels_last: a beta-TCVAE training step (batch 64, one thread, interleaved runs on a loaded
    2-core machine) took 327-458 ms against 611-630 ms contiguous at 1x64x64, 285-388 against 458-480 ms at
    3x64x64 and 106-112 against 120-130 ms at 1x32x32 (MLP layers are unaffected). ``precision`` (runtime.precision)
    ``bf16`` / ``auto`` trains the encoder and decoder under bf16 autocast (``multistage.nn.precision``)."""
    from multistage.models import registry

    config = check_model_options(params, data_options(dataset))
    model = registry.STAGE_ONE[params.model][0](config).to(device)
    if device.type == "cpu" and len(config.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    if resolve_precision(precision, device) == "bf16":
        train_networks_in_bf16(
            device,
            *(
                getattr(model, name)
                for name in ("encoder", "decoder")
                if isinstance(getattr(model, name, None), torch.nn.Module)
            ),
        )
    return model


def run(
    params: StageOneParams,
    device: torch.device,
    tracker=None,
    show_progress: bool = True,
    precision: str = "fp32",
) -> dict:
    from multistage.data.base import to_float
    from multistage.models.files import save_model
    from multistage.train import LoopConfig, train
    from multistage.viz import plot_curves

    data, output = DATA, OUTPUT
    dataset = load_data(data)
    train_indices = dataset.train_indices
    images = dataset.images
    model = build_model(params, dataset, device, precision)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=params.learning_rate)

    def step_fn(batch: np.ndarray, step: int):
        x = to_float(images[np.sort(train_indices[batch])]).to(device)
        return model.objective(x, step)

    terms = ("loss", "recon", *model.logged_terms)
    loop = LoopConfig(
        steps=params.steps,
        batch_size=params.batch_size,
        seed=params.seed,
        checkpoint_every=params.checkpoint_every,
        log_every=params.log_every,
        progress_keys=terms,
    )
    result = train(
        model,
        optimizer,
        step_fn,
        len(train_indices),
        loop,
        CHECKPOINT,
        fingerprint(params.used(), data_fingerprint(data), code_digest("stage_one")),
        callback=step_logger(tracker),
        description=f"stage one ({params.model})",
        show_progress=show_progress,
        extra_modules=model.auxiliary_state(),
    )
    model.eval()
    # the per-unit KL is reported over the whole dataset below, not from the last batch
    summary = {
        k: v
        for k, v in training_summary("stage_one", result).items()
        if ".kl_unit." not in k and ".kl_discrete." not in k
    }

    with StagingDirectory(output) as tmp:
        save_model(tmp / "model.pt", "stage_one", params.model, model, extra={"data": str(data)})
        posterior = encode_all(model, images, device)
        write_codes(tmp / "codes.parquet", posterior, dataset.split, model)
        mu, logvar = posterior["mu"], posterior["logvar"]
        kl_per_unit = (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(axis=0)
        plot_curves(tmp / "curves.png", result.history, terms, f"stage one ({params.model})")
    for j, value in enumerate(kl_per_unit):
        summary[f"stage_one.kl_unit.{j}"] = float(value)
    if "alpha" in posterior:  # each discrete code's KL against its uniform prior, and how much of it is information
        start = 0
        for i, size in enumerate(model.discrete_dims):
            information = discrete_information(posterior["alpha"][:, start : start + size])
            summary[f"stage_one.kl_discrete.{i}"] = information["kl"]
            summary[f"stage_one.discrete.{i}.mutual_information"] = information["mutual_information"]
            summary[f"stage_one.discrete.{i}.values_used"] = information["values_used"]
            warning = collapse_message(information, f"discrete code c{i}")
            if warning:
                print(f"stage one: warning: {warning}", file=sys.stderr)
            start += size
    summary["stage_one.likelihood." + params.likelihood] = 1.0
    summary["stage_one.precision." + resolve_precision(precision, device)] = 1.0
    atomic_write_json(CURVES, [{k: v for k, v in r.items() if not k.startswith("kl_unit")} for r in result.history])
    atomic_write_json(METRICS, summary)
    if tracker is not None:
        tracker.log_metrics(summary)
        tracker.log_artifact(output / "model.pt", "checkpoints")
        tracker.log_artifact(output / "curves.png", "figures")
    return summary


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_params(params_file)
    runtime = load_runtime(params_file)
    device = setup_runtime(runtime, params.seed)
    precision = resolve_precision(runtime.precision, device)
    with stage_run("stage_one", params.used() | {"device": str(device), "precision": precision}) as tracker:
        tracker.set_tags(
            {
                "device": str(device),
                "stage_one.model": params.model,
                "stage_one.likelihood": params.likelihood,
                "stage_one.precision": precision,
            }
        )
        summary = run(params, device, tracker=tracker, precision=precision)
    print(
        f"stage one ({params.model}): {params.steps} steps, {summary['stage_one.images_per_second']:.0f} "
        f"images/s, final loss {summary.get('stage_one.loss', float('nan')):.2f}"
    )
    return summary


if __name__ == "__main__":
    run_cli(main)
