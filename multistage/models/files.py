"""Saving and loading trained models as self-describing files.

A model file holds the registry name, the config dataclass as a dict, the weights and a format tag, so a later
stage (or a user in a notebook) rebuilds the model without knowing its params. It holds only tensors and plain
values and is read with ``torch.load(..., weights_only=True)``: a file that arrives through ``dvc pull`` or the
MLflow registry cannot run code when loaded. A wrong, damaged or unsafe file gives one error naming the file and
what is wrong with it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from multistage.train import atomic_torch_save, first_line, load_tensors_file

FORMAT = "multistage.model/1"


class ModelFileError(ValueError):
    """A model file is missing, unreadable, of another kind, or does not match its config."""


def save_model(path: str | Path, kind: str, name: str, model: torch.nn.Module, extra: dict | None = None) -> None:
    atomic_torch_save(
        {
            "format": FORMAT,
            "kind": kind,
            "name": name,
            "config": dataclasses.asdict(model.config),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "extra": dict(extra or {}),
        },
        Path(path),
    )


def load_model(path: str | Path, kind: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model stored at ``path``; ``kind`` is ``stage_one`` or ``stage_two``. Returns (model, extra)."""
    from multistage.models import registry

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} not found (run the stage that trains it first)")
    try:
        payload = load_tensors_file(path, "model file")
    except ValueError as error:
        raise ModelFileError(str(error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a multistage model file (expected format {FORMAT})")
    if payload["kind"] != kind:
        raise ModelFileError(f"{path} holds a {payload['kind']} model, but a {kind} model is needed here")
    try:
        model = registry.build(kind, payload["name"], **payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise ModelFileError(
            f"{path}: the stored weights do not fit model {payload.get('name')!r}: {first_line(error)}"
        ) from None
    return model.to(device).eval(), payload.get("extra", {})
