"""The pipeline's DAG as ``dvc.yaml`` declares it: every stage with its deps, outs, params, metrics and plots.

The one source of the DAG: the Prefect flow reads its stages, the code each one runs and what it writes from here.
``matrix`` and ``foreach`` stages are expanded as DVC does (``stage_two@msvae``, ``chain@pendulum``), their
``${item...}``, ``${key}`` and ``${<params key>}`` references filled from the item and from params.yaml.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.common import CODE_ROOTS, PARAMS_FILE, InputError, ParamsError, read_params_file

DVC_FILE = Path("dvc.yaml")
REFERENCE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


@dataclass(frozen=True)
class DvcStage:
    """One expanded stage: ``name`` as DVC prints it, ``group`` the dvc.yaml entry it came from, ``item`` the
    matrix / foreach key (None for a plain stage)."""

    name: str
    group: str
    item: str | None
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]

    @property
    def code(self) -> tuple[str, ...]:
        """The deps that are source code (under ``multistage/``, ``stages/`` or ``pipeline/``)."""
        return tuple(dep for dep in self.deps if Path(dep).parts[0] in CODE_ROOTS)

    @property
    def written(self) -> tuple[str, ...]:
        """Everything the stage writes: outs, metrics and plots files."""
        return self.outs + self.metrics + self.plots


def _lookup(name: str, scope: dict[str, Any], where: str) -> Any:
    head, *rest = name.split(".")
    if head not in scope:
        raise ParamsError(f"{where}: '${{{name}}}' names nothing in params.yaml or the stage's item")
    value = scope[head]
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            raise ParamsError(f"{where}: '${{{name}}}' names nothing in params.yaml or the stage's item")
        value = value[part]
    return value


def _fill(value: Any, scope: dict[str, Any], where: str) -> Any:
    """``value`` with every ``${...}`` replaced; a string that is one whole reference keeps the value's type."""
    if isinstance(value, dict):
        return {_fill(k, scope, where): _fill(v, scope, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, scope, where) for v in value]
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value.strip())
    if whole:
        return _lookup(whole.group(1), scope, where)
    return REFERENCE.sub(lambda match: str(_lookup(match.group(1), scope, where)), value)


def _paths(entries: list | None) -> tuple[str, ...]:
    """Paths of a deps / outs / metrics / plots list whose entries are paths or ``{path: options}``."""
    paths = []
    for entry in entries or []:
        paths.extend(entry if isinstance(entry, dict) else [entry])
    return tuple(str(path) for path in paths)


def _stage(name: str, group: str, item: str | None, body: dict) -> DvcStage:
    return DvcStage(
        name,
        group,
        item,
        str(body.get("cmd", "")),
        _paths(body.get("deps")),
        _paths(body.get("outs")),
        _paths(body.get("params")),
        _paths(body.get("metrics")),
        _paths(body.get("plots")),
    )


def _expand(group: str, body: dict, params: dict, where: str) -> list[DvcStage]:
    if "matrix" in body:
        axes = {axis: _fill(values, params, where) for axis, values in body["matrix"].items()}
        template = {k: v for k, v in body.items() if k != "matrix"}
        stages = []
        for combination in itertools.product(*axes.values()):
            item = dict(zip(axes, combination))
            label = "-".join(str(value) for value in combination)
            stages.append(_stage(f"{group}@{label}", group, label, _fill(template, params | {"item": item}, where)))
        return stages
    if "foreach" in body:
        items = _fill(body["foreach"], params, where)
        pairs = items.items() if isinstance(items, dict) else ((value, value) for value in items or [])
        return [
            _stage(f"{group}@{key}", group, str(key), _fill(body["do"], params | {"key": key, "item": value}, where))
            for key, value in pairs
        ]
    return [_stage(group, group, None, _fill(body, params, where))]


def read_stages(
    dvc_file: str | Path = DVC_FILE, params: dict | None = None, params_file: str | Path = PARAMS_FILE
) -> dict[str, DvcStage]:
    """Every stage of ``dvc_file``, expanded against ``params`` (read from ``params_file`` when not given), in the
    file's order."""
    dvc_file = Path(dvc_file)
    try:
        declared = yaml.safe_load(dvc_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ParamsError(f"{dvc_file}: cannot read the pipeline: {error}") from error
    params = read_params_file(params_file) if params is None else params
    stages: dict[str, DvcStage] = {}
    for group, body in (declared.get("stages") or {}).items():
        for stage in _expand(group, body, params, f"{dvc_file}: stage {group!r}"):
            stages[stage.name] = stage
    return stages


def group_code(group: str, dvc_file: str | Path = DVC_FILE) -> tuple[str, ...]:
    """The code deps of the dvc.yaml entry ``group`` as written (a matrix or foreach template's own, the same for
    every item), without expanding it: what a stage fingerprints as the code it runs. A missing file or group is an
    :class:`InputError`."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise InputError(f"{dvc_file} not found")
    try:
        body = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {}).get(group)
    except yaml.YAMLError as error:
        raise InputError(f"{dvc_file}: not valid YAML: {error}") from None
    if not isinstance(body, dict):
        raise InputError(f"{dvc_file}: no stage {group!r}")
    return _stage(group, group, None, body.get("do") or body).code


def params_used(stage: DvcStage, params: dict) -> dict:
    """The part of ``params`` that ``stage`` declares (whole sections or dotted keys), nested as in params.yaml."""
    used: dict[str, Any] = {}
    for dotted in stage.params:
        parts = dotted.split(".")
        value: Any = params
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        node = used
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return used
