"""DVC stage ``stage_two``: learn the residual Z and render X from (Y, Z) on the paired set (MS-VAE sec. 3.2).

Outputs: ``models/stage_two/model.pt``, ``plots/stage_two_curves.json``, ``metrics/stage_two.json``; checkpoint in
``checkpoints/stage_two.pt`` (resumed after a kill, as for stage one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from stages.common import (
    PARAMS_FILE,
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
from stages.train_stage_one import DATA, TrainingParams, data_fingerprint, load_data

PAIRS = Path("pairs")
OUTPUT = Path("models/stage_two")
CURVES = Path("plots/stage_two_curves.json")
METRICS = Path("metrics/stage_two.json")
CHECKPOINT = Path("checkpoints/stage_two.pt")


class StageTwoParams(TrainingParams):
    model: Literal["msvae"] = "msvae"
    residual_dim: int = Field(5, gt=0, le=256)
    beta: float = Field(1.0, ge=0.0)
    base_channels: int = Field(32, gt=0, le=512)


def load_pairs() -> tuple[np.ndarray, np.ndarray]:
    x_index = np.load(require_file(PAIRS / "x_index.npy", "paired set index"))
    y = np.load(require_file(PAIRS / "y.npy", "paired set y"), mmap_mode="r")
    if len(x_index) != len(y):
        from stages.common import InputError

        raise InputError(f"{PAIRS}: x_index has {len(x_index)} rows but y has {len(y)}; rerun the pairs stage")
    return x_index, y


def run(params: StageTwoParams, device: torch.device, tracker=None, show_progress: bool = True) -> dict:
    from multistage.data.base import to_float
    from multistage.models import registry
    from multistage.models.files import save_model
    from multistage.train import LoopConfig, train
    from multistage.viz import plot_curves

    dataset = load_data(DATA)
    images = dataset.images
    x_index, y_all = load_pairs()
    channels, size = int(images.shape[1]), int(images.shape[2])
    model = registry.build(
        "stage_two", params.model, image_channels=channels, image_size=size, residual_dim=params.residual_dim,
        beta=params.beta, base_channels=params.base_channels,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)

    def step_fn(batch: np.ndarray, step: int):
        batch = np.sort(batch)
        x = to_float(images[x_index[batch]]).to(device)
        y = torch.from_numpy(np.asarray(y_all[batch], dtype=np.float32)).to(device)
        return model.objective(x, y)

    loop = LoopConfig(
        steps=params.steps, batch_size=params.batch_size, seed=params.seed,
        checkpoint_every=params.checkpoint_every, log_every=params.log_every, progress_keys=("loss", "recon", "kl"),
    )
    run_fingerprint = fingerprint(params.model_dump(), data_fingerprint(DATA),
                                  file_digest(require_file(PAIRS / "meta.json", "paired set metadata")),
                                  file_digest(PAIRS / "x_index.npy"))
    result = train(model, optimizer, step_fn, len(x_index), loop, CHECKPOINT, run_fingerprint,
                   callback=step_logger(tracker), description="stage two", show_progress=show_progress)
    model.eval()
    summary = training_summary("stage_two", result)
    with StagingDirectory(OUTPUT) as tmp:
        save_model(tmp / "model.pt", "stage_two", params.model, model)
        plot_curves(tmp / "curves.png", result.history, ["loss", "recon", "kl"], "stage two")
    atomic_write_json(CURVES, result.history)
    atomic_write_json(METRICS, summary)
    if tracker is not None:
        tracker.log_metrics(summary)
        tracker.log_artifact(OUTPUT / "model.pt", "checkpoints")
        tracker.log_artifact(OUTPUT / "curves.png", "figures")
    return summary


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(StageTwoParams, "stage_two", params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("stage_two", params.model_dump() | {"device": str(device)}) as tracker:
        tracker.set_tags({"device": str(device)})
        summary = run(params, device, tracker=tracker)
    print(f"stage two: {params.steps} steps, {summary['stage_two.images_per_second']:.0f} images/s, "
          f"final loss {summary.get('stage_two.loss', float('nan')):.2f}")
    return summary


if __name__ == "__main__":
    run_cli(main)
