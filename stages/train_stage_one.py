"""DVC stage ``stage_one``: train the disentangled model C -> Y (beta-TCVAE by default) on the training split.

Outputs: ``models/stage_one/model.pt`` (self-describing model file), ``models/stage_one/codes.parquet`` (encoder
mean and log-variance of every image, with its split), ``plots/stage_one_curves.json`` (per-step loss terms for
``dvc plots``), ``metrics/stage_one.json`` (final terms, throughput). The training checkpoint lives in
``checkpoints/`` (not a DVC output, so it survives DVC clearing outputs before a rerun); a rerun after a kill
resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from stages.common import (
    PARAMS_FILE,
    InputError,
    StageParams,
    StagingDirectory,
    atomic_write_json,
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


class TrainingParams(StageParams):
    steps: int = Field(3000, gt=0)
    batch_size: int = Field(256, gt=1)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    seed: int = 0
    checkpoint_every: int = Field(250, gt=0)
    log_every: int = Field(25, gt=0)


class StageOneParams(TrainingParams):
    model: Literal["betatcvae"] = "betatcvae"
    latent_dim: int = Field(10, gt=0, le=512)
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(6.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0)
    estimator: Literal["stratified", "weighted"] = "stratified"
    warmup_steps: int = Field(0, ge=0)  # the regulariser's weight rises linearly from 0 to 1 over these steps


def data_fingerprint(data: Path) -> str:
    return fingerprint(file_digest(require_file(data / "meta.json", "dataset metadata")),
                       file_digest(require_file(data / "factors.parquet", "factor table")))


def load_data(data: Path):
    from multistage.data.base import load_dataset

    require_file(data / "images.npy", "dataset images")
    try:
        return load_dataset(data)
    except (ValueError, OSError, KeyError) as error:
        raise InputError(f"dataset at {data} cannot be loaded: {error}") from error


def encode_all(model, images: np.ndarray, device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    from multistage.data.base import to_float

    means, logvars = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            mu, logvar = model.encode(to_float(images[start : start + batch_size]).to(device))
            means.append(mu.cpu().numpy())
            logvars.append(logvar.cpu().numpy())
    return np.concatenate(means), np.concatenate(logvars)


def write_codes(path: Path, mu: np.ndarray, logvar: np.ndarray, split: np.ndarray) -> None:
    columns = {"index": np.arange(len(mu)), "split": split}
    columns |= {f"mu_{j}": mu[:, j] for j in range(mu.shape[1])}
    columns |= {f"logvar_{j}": logvar[:, j] for j in range(logvar.shape[1])}
    pq.write_table(pa.table(columns), path)


def run(
    params: StageOneParams,
    device: torch.device,
    tracker=None,
    show_progress: bool = True,
) -> dict:
    from multistage.data.base import to_float
    from multistage.models import registry
    from multistage.models.files import save_model
    from multistage.train import LoopConfig, linear_warmup, train
    from multistage.viz import plot_curves

    data, output = DATA, OUTPUT
    dataset = load_data(data)
    train_indices = dataset.train_indices
    images = dataset.images
    channels, size = int(images.shape[1]), int(images.shape[2])
    model = registry.build(
        "stage_one", params.model, image_channels=channels, image_size=size, latent_dim=params.latent_dim,
        alpha=params.alpha, beta=params.beta, gamma=params.gamma, estimator=params.estimator,
        dataset_size=len(train_indices),
    ).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)

    def step_fn(batch: np.ndarray, step: int):
        x = to_float(images[np.sort(train_indices[batch])]).to(device)
        return model.objective(x, regularisation_weight=linear_warmup(step, params.warmup_steps))

    loop = LoopConfig(
        steps=params.steps, batch_size=params.batch_size, seed=params.seed,
        checkpoint_every=params.checkpoint_every, log_every=params.log_every,
        progress_keys=("loss", "recon", "index_code_mi", "tc", "dim_kl"),
    )
    result = train(
        model, optimizer, step_fn, len(train_indices), loop, CHECKPOINT,
        fingerprint(params.model_dump(), data_fingerprint(data)), callback=step_logger(tracker),
        description="stage one", show_progress=show_progress,
    )
    model.eval()
    # the per-unit KL is reported over the whole dataset below, not from the last batch
    summary = {k: v for k, v in training_summary("stage_one", result).items() if ".kl_unit." not in k}

    with StagingDirectory(output) as tmp:
        save_model(tmp / "model.pt", "stage_one", params.model, model, extra={"data": str(data)})
        mu, logvar = encode_all(model, images, device)
        write_codes(tmp / "codes.parquet", mu, logvar, dataset.split)
        kl_per_unit = (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(axis=0)
        plot_curves(tmp / "curves.png", result.history, ["loss", "recon", "index_code_mi", "tc", "dim_kl"],
                    "stage one")
    for j, value in enumerate(kl_per_unit):
        summary[f"stage_one.kl_unit.{j}"] = float(value)
    atomic_write_json(CURVES, [{k: v for k, v in r.items() if not k.startswith("kl_unit")} for r in result.history])
    atomic_write_json(METRICS, summary)
    if tracker is not None:
        tracker.log_metrics(summary)
        tracker.log_artifact(output / "model.pt", "checkpoints")
        tracker.log_artifact(output / "curves.png", "figures")
    return summary


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(StageOneParams, "stage_one", params_file)
    runtime = load_runtime(params_file)
    device = setup_runtime(runtime, params.seed)
    with stage_run("stage_one", params.model_dump() | {"device": str(device)}) as tracker:
        tracker.set_tags({"device": str(device)})
        summary = run(params, device, tracker=tracker)
    print(f"stage one: {params.steps} steps, {summary['stage_one.images_per_second']:.0f} images/s, "
          f"final loss {summary.get('stage_one.loss', float('nan')):.2f}")
    return summary


if __name__ == "__main__":
    run_cli(main)
