"""Where each stage-two variant's files live (``stage_two@<variant>`` in dvc.yaml); no torch import, so the light
stages (report, the pipeline summary) can use it."""

from __future__ import annotations

from pathlib import Path

OUTPUT_ROOT = Path("models/stage_two")


def output_folder(variant: str) -> Path:
    """``models/stage_two/<variant>/``: model.pt and curves.png."""
    return OUTPUT_ROOT / variant


def model_file(variant: str) -> Path:
    return output_folder(variant) / "model.pt"


def curves_file(variant: str) -> Path:
    return Path(f"plots/stage_two_curves_{variant}.json")


def metrics_file(variant: str) -> Path:
    return Path(f"metrics/stage_two_{variant}.json")


def checkpoint_file(variant: str) -> Path:
    return Path(f"checkpoints/stage_two_{variant}.pt")
