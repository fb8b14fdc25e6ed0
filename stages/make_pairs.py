"""DVC stage ``pairs``: the paired set {(x, y)} of MS-VAE (section 3.2, appendix I).

For each training x: c ~ q(c|x) (or its mean, ``pairs.use_mean``), y = E[p(y|c)] as probabilities, k samples per
x (``pairs.samples_per_x``). Stored in ``pairs/`` as ``x_index.npy`` (index into the dataset), ``c.npy``,
``y.npy`` (float16 probabilities, N*k x C x H x W, memory-mappable) and ``meta.json``, so every pair can be
audited back to its image and code.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from stages.common import (
    PARAMS_FILE,
    StageParams,
    StagingDirectory,
    atomic_write_json,
    load_runtime,
    load_section,
    load_trained_model,
    run_cli,
    setup_runtime,
)
from stages.tracking import stage_run
from stages.train_stage_one import DATA, load_data

STAGE_ONE_MODEL = Path("models/stage_one/model.pt")
OUTPUT = Path("pairs")


class PairsParams(StageParams):
    samples_per_x: int = Field(1, ge=1, le=64)
    use_mean: bool = False
    seed: int = 0
    batch_size: int = Field(512, gt=0)


def load_stage_one(device):
    return load_trained_model(STAGE_ONE_MODEL, "stage_one", device)


def run(params: PairsParams, device, show_progress: bool = True) -> dict:
    from multistage.models.stage_two.pairing import make_pairs

    started = time.perf_counter()
    dataset = load_data(DATA)
    model = load_stage_one(device)
    indices = dataset.train_indices
    with tqdm(total=len(indices) * params.samples_per_x, desc="pairs", unit="pair", disable=not show_progress) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        pairs = make_pairs(
            model,
            dataset.images,
            indices,
            samples_per_x=params.samples_per_x,
            use_mean=params.use_mean,
            batch_size=params.batch_size,
            seed=params.seed,
            device=device,
            progress=progress,
        )
    with StagingDirectory(OUTPUT) as tmp:
        for name in ("x_index", "c", "y"):
            np.save(tmp / f"{name}.npy", pairs[name])
        atomic_write_json(
            tmp / "meta.json",
            {
                "pairs": int(len(pairs["x_index"])),
                "samples_per_x": params.samples_per_x,
                "use_mean": params.use_mean,
                "y": "probabilities E[p(y|c)], float16",
                "stage_one": str(STAGE_ONE_MODEL),
            },
        )
    return {
        "pairs.count": int(len(pairs["x_index"])),
        "pairs.seconds": time.perf_counter() - started,
        "pairs.y_mean": float(pairs["y"][:4096].astype(np.float32).mean()),
    }


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(PairsParams, "pairs", params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("pairs", params.model_dump()) as tracker:
        summary = run(params, device)
        tracker.log_metrics(summary)
    print(f"pairs: {summary['pairs.count']} pairs in {summary['pairs.seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    run_cli(main)
