"""DVC stage ``evaluate``: score stage one and every stage-two variant, compare the variants in one table.

Loads the prepared data, stage one and the models of ``stage_two.variants`` (the first is the headline), calls
:func:`multistage.evaluation.scoring.compute` (the scores and what they mean are documented there and in the
metric registry), draws the figures, writes ``metrics/evaluate.json`` (every score, flat keys; None where a variant
has no such output; ``skipped.<group>`` notes), ``metrics/headline.json`` (the few headline scores that ``dvc
metrics show`` prints) and ``figures/`` with ``figures/captions.json``, and logs scores, notes and figures to
MLflow. The params section ``evaluate`` is derived from the config dataclasses (:mod:`multistage.evaluation.config`
and each registered metric's), which hold every default.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import create_model

from multistage.evaluation.config import EvaluationConfig
from multistage.evaluation.figures import draw_figures
from multistage.evaluation.headline import headline_scores
from multistage.evaluation.registry import METRICS
from multistage.evaluation.representation import EvaluationInputError
from multistage.evaluation.scoring import compute
from stages.common import (
    PARAMS_FILE,
    InputError,
    StageParams,
    StagingDirectory,
    atomic_write_json,
    load_runtime,
    load_section,
    load_trained_model,
    run_cli,
    setup_runtime,
)
from stages.make_pairs import load_stage_one
from stages.tracking import stage_run
from stages.train_stage_one import DATA, encode_all, load_data

STAGE_ONE_CODES = Path("models/stage_one/codes.parquet")
SCORES = Path("metrics/evaluate.json")
HEADLINE_FILE = Path("metrics/headline.json")
FIGURES = Path("figures")
CAPTIONS_FILE = "captions.json"


# ------------------------------------------------------------------------------------------------- params
def _annotation(hint: Any) -> Any:
    """A dataclass field's type as a params field: nested config dataclasses become sub-sections, tuples lists."""
    if dataclasses.is_dataclass(hint):
        return section_model(hint)
    if typing.get_origin(hint) is tuple:
        return list[typing.get_args(hint)[0]]
    return hint


def section_model(config_class: type, name: str | None = None, **extra: Any) -> type[StageParams]:
    """The pydantic model of a params section whose keys, types and defaults are the fields of ``config_class``."""
    hints = typing.get_type_hints(config_class, include_extras=True)
    fields = {}
    for field in dataclasses.fields(config_class):
        if field.name in extra or field.name == "metric_configs":
            continue
        annotation = _annotation(hints[field.name])
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            default = annotation(**dataclasses.asdict(default))
        fields[field.name] = (annotation, list(default) if isinstance(default, tuple) else default)
    return create_model(
        name or f"{config_class.__name__.removesuffix('Config')}Params", __base__=StageParams, **fields, **extra
    )


MetricName = Literal[tuple(METRICS)]
ALL_METRICS: list[str] = list(METRICS)
EvaluateParams = section_model(
    EvaluationConfig,
    "EvaluateParams",
    metrics=(list[MetricName], ALL_METRICS),
    **{
        name: (section_model(metric.config), section_model(metric.config)())
        for name, metric in METRICS.items()
        if dataclasses.fields(metric.config)
    },
)
EvaluateParams.__doc__ = (
    "params.yaml's ``evaluate``: EvaluationConfig's fields, a sub-section per metric with settings (``evaluate.sap``)."
)


def _from_section(config_class: type, values: dict) -> Any:
    hints = typing.get_type_hints(config_class)
    options = {}
    for field in dataclasses.fields(config_class):
        if field.name not in values:
            continue
        value, hint = values[field.name], hints[field.name]
        if dataclasses.is_dataclass(hint):
            value = _from_section(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        options[field.name] = value
    return config_class(**options)


def evaluation_config(params) -> EvaluationConfig:
    """The library's config from the validated params section."""
    values = params.model_dump()
    configs = {name: _from_section(metric.config, values.get(name, {})) for name, metric in METRICS.items()}
    return dataclasses.replace(_from_section(EvaluationConfig, values), metric_configs=configs)


# ------------------------------------------------------------------------------------------------- the stage
def listed_variants(params_file: str | Path = PARAMS_FILE) -> list[str]:
    """``stage_two.variants`` as validated by the stage-two params (first = headline)."""
    from stages.train_stage_two import load_params

    return list(load_params(params_file).variants)


def load_stage_two(variants: list[str], device) -> dict:
    """The trained model of each variant, in order (``models/stage_two/<variant>/model.pt``)."""
    from stages.stage_two_files import model_file

    return {name: load_trained_model(model_file(name), "stage_two", device).eval() for name in variants}


def print_skipped(scores: dict) -> None:
    notes = {key.removeprefix("skipped."): value for key, value in scores.items() if key.startswith("skipped.")}
    for reason in dict.fromkeys(notes.values()):
        groups = ", ".join(group for group, why in notes.items() if why == reason)
        print(f"evaluate: skipped {groups} ({reason}); see skipped.<group> in {SCORES}")


def run(
    params, device: torch.device, tracker=None, show_progress: bool = True, variants: list[str] | None = None
) -> dict:
    started = time.perf_counter()
    stage_one = load_stage_one(device)
    stage_one.eval()
    stage_two = load_stage_two(variants or listed_variants(), device)
    dataset = load_data(DATA)

    def encode(model, rows, batch_size: int):
        return encode_all(model, rows, device, batch_size)

    try:
        scores, examples = compute(
            evaluation_config(params), device, dataset, stage_one, stage_two, encode, STAGE_ONE_CODES, show_progress
        )
    except EvaluationInputError as error:
        raise InputError(f"{DATA}, models/stage_one: {error}") from None
    print_skipped(scores)
    scores["evaluate.variants"] = ",".join(stage_two)
    with StagingDirectory(FIGURES) as tmp:
        captions = draw_figures(tmp, examples, stage_one, stage_two, device, params.figure_images)
        atomic_write_json(tmp / CAPTIONS_FILE, captions)
    scores["evaluate.seconds"] = time.perf_counter() - started
    atomic_write_json(SCORES, scores)
    atomic_write_json(HEADLINE_FILE, headline_scores(scores))
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in scores.items() if isinstance(v, (int, float))})
        notes = {k: str(v)[:5000] for k, v in scores.items() if k.startswith("skipped.") and isinstance(v, str)}
        if notes:
            tracker.set_tags(notes)
        for entry in captions:
            tracker.log_artifact(FIGURES / entry["file"], "figures")
    return scores


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(EvaluateParams, "evaluate", params_file)
    variants = listed_variants(params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("evaluate", params.model_dump() | {"stage_two.variants": ",".join(variants)}) as tracker:
        scores = run(params, device, tracker=tracker, variants=variants)
    bins = params.mig_bins

    def show(key: str) -> str:
        value = scores.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    print(
        f"evaluate: MIG (histogram) on X {show(f'x.mig.histogram{bins}')}, on Y {show(f'y.mig.histogram{bins}')}, "
        f"on X-hat {show(f'x_hat.mig.histogram{bins}')}; MIG (sampling) on X {show('x.mig.sampling')}; "
        f"SAP {show('x.sap')}; FactorVAE score {show('x.factorvae_score')}; Fréchet (detail network) Y "
        f"{show('frechet.detail_classifier.y')} -> X-hat {show('frechet.detail_classifier.x_hat')} (shape-only "
        f"{show('frechet.factor_classifier.y')} -> {show('frechet.factor_classifier.x_hat')}); detail gap closed "
        f"{show('detail.gap_closed')}; TC {show('tc_decomposition.total_correlation')}"
    )
    return scores


if __name__ == "__main__":
    run_cli(main)
