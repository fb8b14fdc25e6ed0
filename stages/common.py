"""What every stage shares: reading and validating its params section, atomic writes, fingerprints.

A stage validates its section before touching the disk. A bad section produces one message that names the key
(``stage_one.beta``), what was given and what is allowed, and the process exits with status 2 having written
nothing (:class:`ParamsError` is turned into that exit by :func:`run_cli`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from multistage.io import atomic_path, current_umask

PARAMS_FILE = "params.yaml"
Model = TypeVar("Model", bound=BaseModel)


class ParamsError(ValueError):
    """A params section is missing, has an unknown key or a bad value; the message says which and where."""


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, values are checked as typed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found (run from the repository root, or pass --params)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _allowed_values(model: type[BaseModel], location: tuple) -> str:
    """Describe what a field accepts: its Literal choices, or its type and bounds."""
    current: Any = model
    field = None
    for part in location:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return "one of: " + ", ".join(sorted(current.model_fields))
        annotation = field.annotation
        current = annotation
    if field is None:
        return ""
    if isinstance(current, type) and issubclass(current, BaseModel):  # a sub-section: list its keys
        return "one of: " + ", ".join(current.model_fields)
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return "one of: " + ", ".join(repr(a) for a in typing.get_args(annotation))
    bounds = []
    for item in field.metadata:
        for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(item, name, None) is not None:
                bounds.append(f"{symbol} {getattr(item, name)}")
    type_name = getattr(annotation, "__name__", str(annotation))
    return f"{type_name}" + (f" {' and '.join(bounds)}" if bounds else "")


def validate_section(model: type[Model], raw: Any, section: str, source: str = PARAMS_FILE) -> Model:
    """Validate ``raw`` (the section's mapping) against ``model``; one clear :class:`ParamsError` if it fails."""
    if raw is None:
        raise ParamsError(f"{source}: section '{section}' is missing")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: section '{section}' must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            location = tuple(problem["loc"])
            key = ".".join([section, *map(str, location)])
            if problem["type"] == "extra_forbidden":
                parent = location[:-1]
                allowed = _allowed_values(model, parent) if parent else "one of: " + ", ".join(model.model_fields)
                lines.append(f"{source}: unknown key '{key}'; allowed keys: {allowed.removeprefix('one of: ')}")
            else:
                given = problem.get("input")
                lines.append(
                    f"{source}: bad value for '{key}': {given!r} ({problem['msg']}); allowed: "
                    f"{_allowed_values(model, location)}"
                )
        raise ParamsError("\n".join(lines)) from None


def apply_overrides(params: dict, overrides: dict[str, Any] | None) -> dict:
    """``{"stage_one.betatcvae.beta": 4}`` -> params with that leaf replaced; an unknown section is an error."""
    params = copy.deepcopy(params)
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = params
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"override {dotted!r}: no section {part!r} in the params")
            node = node[part]
        node[leaf] = value
    return params


def load_section(model: type[Model], section: str, params_file: str | Path = PARAMS_FILE) -> Model:
    return validate_section(model, read_params_file(params_file).get(section), section, str(params_file))


def run_cli(main: Callable[[], object]) -> None:
    """Run a stage's ``main``; a :class:`ParamsError` or bad input file becomes one message and exit 2."""
    try:
        main()
    except (ParamsError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


class InputError(ValueError):
    """An input file (data, checkpoint, model) is missing or malformed; the message names it."""


# ----------------------------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class StagingDirectory:
    """Build an output folder under a temporary name and swap it in on success.

    ``with StagingDirectory(Path("models/stage_one")) as tmp:`` — write into ``tmp``; on a clean exit the old
    folder (if any) is replaced by it, on an error the temporary folder is removed and the old one is left as is.
    """

    def __init__(self, target: str | Path):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp"))
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual permissions
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)


# ------------------------------------------------------------------------------------------------ fingerprints
def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (params dumps, file digests) used to match checkpoints."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=_json_default).encode())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found at {path} (run the stage that makes it first: `dvc repro`)")
    return path


# ---------------------------------------------------------------------------------------------------- runtime
class RuntimeParams(StageParams):
    """The ``runtime`` section: where and how tensors are computed (read by every stage that computes)."""

    device: str = "auto"
    threads: int = 0  # 0 keeps torch's default (one per core)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # stage-one networks while training (multistage.nn.precision)


def setup_runtime(runtime: RuntimeParams, seed: int):
    """Choose the device (the one place: :func:`multistage.train.select_device`), record it for MLflow, set threads
    and seeds."""
    import torch

    from multistage.train import seed_everything, select_device

    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)
    # Denormal floats appear in the AdaIN decoder's activations and gradients after a few hundred steps and slow
    # a CPU step about tenfold (measured: 170 ms -> 2.2 s per MS-VAE batch of 64); flushing them to zero costs
    # nothing in accuracy at these magnitudes.
    torch.set_flush_denormal(True)
    try:
        device = select_device(runtime.device)
    except ValueError as error:
        raise ParamsError(f"{PARAMS_FILE}: bad value for 'runtime.device': {error}") from None
    from stages.tracking import record_device

    record_device(device)  # every MLflow stage run this process starts is tagged with it
    seed_everything(seed)
    return device


def load_runtime(params_file: str | Path = PARAMS_FILE) -> RuntimeParams:
    raw = read_params_file(params_file).get("runtime", {})
    return validate_section(RuntimeParams, raw, "runtime", str(params_file))


# ------------------------------------------------------------------------------------------- training stages
def step_logger(tracker):
    """The training loop's callback: per-step values to MLflow as ``train.<term>`` (nothing without a tracker)."""

    def callback(step: int, record: dict) -> None:
        if tracker is not None:
            tracker.log_metrics({f"train.{k}": v for k, v in record.items() if k != "step"}, step=step)

    return callback


def training_summary(prefix: str, result) -> dict[str, float]:
    """Final logged terms and throughput of a :class:`multistage.train.TrainResult`, keys ``<prefix>.<term>``."""
    final = {k: v for k, v in result.history[-1].items() if k != "step"} if result.history else {}
    summary = {f"{prefix}.{k}": v for k, v in final.items()}
    summary[f"{prefix}.images_per_second"] = result.images_per_second
    summary[f"{prefix}.seconds"] = result.seconds
    summary[f"{prefix}.resumed_from_step"] = result.start_step
    return summary


def load_trained_model(path: str | Path, kind: str, device):
    """A model file written by a training stage; a missing or wrong file is an :class:`InputError` naming it."""
    from multistage.models.files import ModelFileError, load_model

    try:
        model, _ = load_model(path, kind, device)
    except ModelFileError as error:
        raise InputError(str(error)) from error
    return model
