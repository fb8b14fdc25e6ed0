"""DVC stage ``prepare``: generate the dataset named in ``params.yaml: prepare`` into ``data/prepared``.

Writes ``images.npy`` (memory-mappable uint8 N x C x H x W), ``factors.parquet`` (class indices, values, split,
nuisance) and ``meta.json`` — built in a temporary folder and swapped in, so DVC never sees half a dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from stages.common import PARAMS_FILE, StageParams, StagingDirectory, load_section, run_cli
from stages.tracking import stage_run

OUTPUT = Path("data/prepared")


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


class PrepareParams(StageParams):
    dataset: Literal["dsprites"] = "dsprites"
    variant: Literal["binary", "textured"] = "textured"
    n_images: int | None = Field(60000, gt=0, le=737280)
    seed: int = 0
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    texture: TextureParams = TextureParams()


def run(params: PrepareParams, show_progress: bool = True) -> dict:
    from multistage.data.dsprites import make_dsprites

    started = time.perf_counter()
    with tqdm(total=params.n_images or 737280, desc="prepare", unit="img", disable=not show_progress) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        with StagingDirectory(OUTPUT) as tmp:
            options = params.texture.model_dump() if params.variant == "textured" else {}
            dataset = make_dsprites(
                tmp,
                n_images=params.n_images,
                seed=params.seed,
                variant=params.variant,
                test_fraction=params.test_fraction,
                progress=progress,
                **options,
            )
            summary = {
                "images": int(dataset.images.shape[0]),
                "train_images": int(len(dataset.train_indices)),
                "test_images": int(len(dataset.test_indices)),
                "channels": int(dataset.images.shape[1]),
            }
            del dataset  # close the memmap before the folder is renamed
    summary["seconds"] = time.perf_counter() - started
    return summary


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(PrepareParams, "prepare", params_file)
    with stage_run("prepare", params.model_dump()) as tracker:
        summary = run(params)
        tracker.log_metrics({f"prepare.{k}": v for k, v in summary.items()})
    print(f"prepare: {summary['images']} images ({summary['train_images']} train) in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    run_cli(main)
