"""What every stage shares: reading and validating its params section, atomic writes, fingerprints.

A stage validates its section before touching the disk. A bad section produces one message that names the key
(``stage_one.beta``), what was given and what is allowed, and the process exits with status 2 having written
nothing (:class:`ParamsError` is turned into that exit by :func:`run_cli`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from multistage.io import atomic_path, current_umask

PARAMS_FILE = "params.yaml"
Model = TypeVar("Model", bound=BaseModel)


class ParamsError(ValueError):
    """A params section is missing, has an unknown key or a bad value; the message says which and where."""


def _union_members(annotation: Any) -> tuple:
    """The types a field admits: the members of a Union / Optional, each stripped of ``Annotated[...]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _union_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(member for arg in typing.get_args(annotation) for member in _union_members(arg))
    return (annotation,)


def _takes_number_not_bool(annotation: Any) -> bool:
    """Whether a field of this type takes a number (int or float) and not a boolean."""
    members = _union_members(annotation)
    return bool not in members and any(member in (int, float) for member in members)


def _element_takes_number_not_bool(annotation: Any) -> bool:
    """Whether a list/tuple field of this type holds numbers and not booleans (``list[int]``, ``tuple[float, ...]``)."""
    for member in _union_members(annotation):
        if typing.get_origin(member) in (list, tuple, set, frozenset):
            if any(_takes_number_not_bool(arg) for arg in typing.get_args(member) if arg is not Ellipsis):
                return True
    return False


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, values are checked as typed, and a boolean is not a
    number (pydantic would read ``steps: true`` as 1 and ``learning_rate: true`` as 1.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        if isinstance(value, bool) and _takes_number_not_bool(field.annotation):
            raise ValueError(f"a number is needed, not the boolean {str(value).lower()}")
        if (
            isinstance(value, (list, tuple))
            and any(isinstance(item, bool) for item in value)
            and _element_takes_number_not_bool(field.annotation)
        ):
            raise ValueError("a list of numbers is needed, not booleans")
        return value


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
    """Run a stage's ``main``; bad params, a bad input file (data, checkpoint, model file) or a non-finite loss
    becomes one message on stderr (no traceback) and exit 2."""
    from multistage.models.files import ModelFileError
    from multistage.train import CheckpointError, NonFiniteLossError, WriteError, is_disk_full

    try:
        main()
    except (ParamsError, InputError, CheckpointError, ModelFileError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # a full disk: not bad input (exit 1), but one line all the same
        if not (isinstance(error, WriteError) or is_disk_full(error)):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


class InputError(ValueError):
    """An input file (data, checkpoint, model) is missing or malformed; the message names it."""


# ----------------------------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    from multistage.train import WriteError, is_disk_full

    try:
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, WriteError):
            raise WriteError(
                f"cannot write {path}: {error.strerror or error}; the previous file, if any, is untouched"
            ) from None
        raise


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Strict JSON (RFC 8259): a NaN or infinite number is written as ``null`` (Python's ``NaN`` is no JSON)."""
    text = json.dumps(finite_or_null(payload), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN / infinite float (also inside dicts, lists, numpy scalars) replaced by None."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(inner) for inner in value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return finite_or_null(value.tolist())
    return value


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
            from multistage.train import WriteError, is_disk_full

            if isinstance(exc, OSError) and is_disk_full(exc) and not isinstance(exc, WriteError):
                raise WriteError(
                    f"cannot write {self.target}: {exc.strerror or exc}; the previous {self.target} is untouched"
                ) from None
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


def file_digest(path: str | Path, chunk: int = 1 << 24, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes, read in chunks. Fingerprints of large arrays use ``algorithm="sha256"``
    (hardware-accelerated: twice md5's speed, see docs/reliability.md for the measured cost)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


CODE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the running multistage/ and stages/
CODE_ROOTS = ("multistage", "stages", "pipeline")  # a dvc.yaml dep under one of these is code, not data


def digest_paths(paths: list[str | Path], root: Path = Path(".")) -> str:
    """Content digest of files and folders (relative names and bytes, folders walked in order, ``__pycache__``
    left out); a missing path counts as 'missing'."""
    digest = hashlib.md5()
    for name in paths:
        path = root / name
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            if path.is_dir()
            else [path]
        )
        for file in files:
            digest.update(str(file.relative_to(root)).encode())
            if not file.exists():
                digest.update(b"missing")
                continue
            with open(file, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def stage_code_files(stage: str, dvc_file: str | Path | None = None) -> list[Path]:
    """The code files ``stage`` runs: every file under its code deps in dvc.yaml (`stages.dvc_graph.group_code`;
    ``stage_two@msvae`` reads the deps of ``stage_two``). ``dvc_file`` defaults to the dvc.yaml beside the running
    code (also when a Prefect sweep runs the stage in another folder); without one (a packaged install) every file
    of the code folders counts. A dvc.yaml without the stage is an :class:`InputError`."""
    from stages.dvc_graph import group_code  # dvc_graph builds on this module

    dvc_file = Path(dvc_file) if dvc_file is not None else CODE_ROOT / "dvc.yaml"
    if dvc_file.parent == CODE_ROOT and not dvc_file.exists():
        deps: tuple[str, ...] = CODE_ROOTS
    else:
        deps = group_code(stage.split("@")[0], dvc_file)
    files: set[Path] = set()
    for dep in deps:
        path = dvc_file.parent / dep
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        elif path.is_file():
            files.add(path)
    return sorted(files)


def code_digest(stage: str, dvc_file: str | Path | None = None) -> str:
    """A digest of the code ``stage`` runs (:func:`stage_code_files`), so that a checkpoint made by other code is
    not resumed."""
    root = Path(dvc_file).parent if dvc_file is not None else CODE_ROOT
    return digest_paths([path.relative_to(root) for path in stage_code_files(stage, dvc_file)], root)[:16]


def load_array(path: str | Path, what: str, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array (memory-mapped with ``mmap``); missing, truncated, pickled or garbage files are one
    :class:`InputError` naming the file."""
    path = require_file(path, what)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{what} {path} cannot be read ({reason}); rerun the stage that makes it") from None


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
    """The ``runtime`` section. Unlike the stage sections it may be left out: it describes the machine, not the
    experiment, and each of its keys has a default (device auto, threads 0, precision fp32) — every reader of
    the section (stages, the Prefect flow, profiles) treats a missing one as empty. A section that is present is
    validated like any other."""
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
