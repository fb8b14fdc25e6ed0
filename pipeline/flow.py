"""The pipeline as a Prefect flow: the same stage ``run`` functions DVC calls, as tasks.

``python -m pipeline.flow [--params params.yaml] [--set stage_one.betatcvae.beta=4 ...]`` runs it locally;
``prefect.yaml`` deploys it as ``multistage-pipeline/pipeline`` on the ``gpu`` work pool. The stages, the code
each one runs (its deps under multistage/, stages/, pipeline/), what it writes (outs, metrics, plots) and the
params keys of each stage-two variant are read from ``dvc.yaml`` (:mod:`stages.dvc_graph`). Each task retries
once (training resumes from its checkpoint); caches on its params section, its upstream outputs' digests and its
code's digest (``INPUTS + TASK_SOURCE``), but only while its outputs on disk are what it left there
(``.multistage/prefect/<stage>.digest``); and logs to MLflow as a child of one parent run per flow run.

``workdir`` runs the stages in another folder (a sweep gives each point its own); params are read from the
project root, written into the workdir, and MLflow keeps logging to the project's store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from pipeline.summary import read_scores
from stages import check_params, evaluate, make_pairs, prepare, report, train_stage_one, train_stage_two
from stages.common import (
    PARAMS_FILE,
    ParamsError,
    RuntimeParams,
    apply_overrides,
    atomic_write_bytes,
    digest_paths,
    read_params_file,
    setup_runtime,
    validate_section,
)
from stages.dvc_graph import DVC_FILE, DvcStage, params_used, read_stages
from stages.tracking import log_run_metrics, pipeline_run, recorded_device, set_run_tags, stage_run, tracking_uri

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
FLOW_GROUPS = ("prepare", "stage_one", "pairs", "stage_two", "evaluate", "report")  # chain@<name>: stages.chain


def pipeline_graph(params: dict) -> dict[str, DvcStage]:
    """The stages the flow runs, as dvc.yaml declares them (deps, outs, params) for these params; a dvc.yaml stage
    the flow has no task for is an error, so that the two cannot drift apart."""
    graph = read_stages(PACKAGE_ROOT / DVC_FILE, params)
    # check_params: the flow validates the effective params itself before its first task (check_effective_params)
    unknown = sorted({stage.group for stage in graph.values()} - set(FLOW_GROUPS) - {"chain", "check_params"})
    if unknown:
        raise ParamsError(
            f"{DVC_FILE}: the Prefect flow has no task for the stage(s) {', '.join(unknown)}; add one "
            f"to pipeline/flow.py"
        )
    return {name: stage for name, stage in graph.items() if stage.group in FLOW_GROUPS}


def variant_section(stage: DvcStage, params: dict) -> dict:
    """The part of params' ``stage_two`` that ``stage_two@<variant>`` declares in dvc.yaml (so that a change to
    another variant's sub-section leaves this task cached), listing only this variant."""
    return params_used(stage, params).get("stage_two", {}) | {"variants": [stage.item]}


RECORDS = Path(".multistage/prefect")


def record_outputs(stage: str, outputs: list[str]) -> str:
    """Digest the stage's outputs and remember it, so a later run can tell whether they are intact."""
    digest = digest_paths(outputs)
    atomic_write_bytes(RECORDS / f"{stage}.digest", digest.encode())
    return digest


def outputs_intact(stage: str, outputs: list[str]) -> bool:
    record = RECORDS / f"{stage}.digest"
    return record.exists() and record.read_text() == digest_paths(outputs)


def _stage_task(stage: str):
    return task(
        name=stage,
        task_run_name="stage_two@{variant}" if stage == "stage_two" else None,
        retries=1,
        retry_delay_seconds=2,
        cache_policy=INPUTS + TASK_SOURCE,
        persist_result=True,
    )


def _device(runtime: dict, seed: int):
    return setup_runtime(validate_section(RuntimeParams, runtime, "runtime"), seed)


@_stage_task("prepare")
def prepare_task(section: dict, outputs: list[str], code: str) -> str:
    params = validate_section(prepare.PrepareParams, section, "prepare")
    with stage_run("prepare", params.model_dump()) as tracker:
        tracker.log_metrics({f"prepare.{k}": v for k, v in prepare.run(params, show_progress=False).items()})
    return record_outputs("prepare", outputs)


@_stage_task("stage_one")
def stage_one_task(section: dict, runtime: dict, data: str, outputs: list[str], code: str) -> str:
    params = validate_section(train_stage_one.StageOneParams, section, "stage_one")
    device = _device(runtime, params.seed)
    with stage_run("stage_one", params.model_dump() | {"device": str(device)}) as tracker:
        train_stage_one.run(
            params,
            device,
            tracker=tracker,
            show_progress=False,
            precision=validate_section(RuntimeParams, runtime, "runtime").precision,
        )
    return record_outputs("stage_one", outputs)


@_stage_task("pairs")
def pairs_task(section: dict, runtime: dict, data: str, stage_one: str, outputs: list[str], code: str) -> str:
    params = validate_section(make_pairs.PairsParams, section, "pairs")
    device = _device(runtime, params.seed)
    with stage_run("pairs", params.model_dump()) as tracker:
        tracker.log_metrics(make_pairs.run(params, device, show_progress=False))
    return record_outputs("pairs", outputs)


@_stage_task("stage_two")
def stage_two_task(
    section: dict, runtime: dict, data: str, pairs: str, stage_one: str, variant: str, outputs: list[str], code: str
) -> str:
    """``stage_two@<variant>``; ``section`` is :func:`variant_section` of params' stage_two."""
    params = validate_section(train_stage_two.StageTwoParams, section, "stage_two")
    device = _device(runtime, params.seed)
    with stage_run(f"stage_two@{variant}", params.used(variant) | {"device": str(device)}) as tracker:
        tracker.set_tags({"device": str(device), "stage_two.variant": variant})
        train_stage_two.run(params, variant, device, tracker=tracker, show_progress=False)
    return record_outputs(f"stage_two@{variant}", outputs)


@_stage_task("evaluate")
def evaluate_task(
    section: dict,
    variants: list[str],
    runtime: dict,
    data: str,
    stage_one: str,
    stage_two: list[str],
    outputs: list[str],
    code: str,
) -> str:
    params = validate_section(evaluate.EvaluateParams, section, "evaluate")
    device = _device(runtime, params.seed)
    with stage_run("evaluate", params.model_dump() | {"stage_two.variants": ",".join(variants)}) as tracker:
        evaluate.run(params, device, tracker=tracker, show_progress=False, variants=variants)
    return record_outputs("evaluate", outputs)


@_stage_task("report")
def report_task(params: dict, scores: str, stage_two: list[str], sweep: str, outputs: list[str], code: str) -> str:
    with stage_run("report") as tracker:
        report.publish(params, tracker)
    return record_outputs("report", outputs)


def _prefect_tags(sweep: str | None) -> dict[str, str]:
    from prefect.runtime import deployment, flow_run

    tags = {"prefect.flow": "multistage-pipeline", "prefect.flow_run_id": str(flow_run.id or "")}
    if deployment.name:
        tags["prefect.deployment"] = f"multistage-pipeline/{deployment.name}"
    if sweep:
        tags["multistage.sweep"] = sweep
    return tags


@contextlib.contextmanager
def _inside(workdir: str | None, params: dict):
    """Run in ``workdir`` (made if missing, effective params written there) with MLflow pinned to the project's
    store; back to the original folder afterwards."""
    if not workdir:
        yield
        return
    origin, previous_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()  # resolved here, at the project root
    Path(workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    try:
        atomic_write_bytes(Path(PARAMS_FILE), yaml.safe_dump(params, sort_keys=False).encode())
        yield
    finally:
        os.chdir(origin)
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri


def check_effective_params(params: dict, params_file: str) -> None:
    """Every section of the effective params (the file with the flow's overrides applied) through the checks of
    the ``check_params`` stage, before any task runs or any output is touched; a bad value raises ParamsError naming
    the key."""
    with tempfile.TemporaryDirectory() as scratch:
        effective = Path(scratch) / "params.yaml"
        effective.write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            check_params.check_all(effective)
        except ParamsError as error:
            raise ParamsError(
                str(error).replace(str(effective), f"{params_file} (with the flow's overrides)")
            ) from None


@flow(name="multistage-pipeline", log_prints=True)
def multistage_pipeline(
    params_file: str = PARAMS_FILE,
    overrides: dict[str, Any] | None = None,
    workdir: str | None = None,
    sweep: str | None = None,
    mlflow_parent_run_id: str | None = None,
) -> dict:
    """prepare -> stage one -> pairs -> stage two (one task per ``stage_two.variants`` entry) -> evaluate ->
    report, under one MLflow parent run.

    ``overrides`` replace params leaves (``{"stage_one.betatcvae.beta": 4}``); ``workdir`` runs the stages there;
    ``sweep`` and ``mlflow_parent_run_id`` are set by the sweep flow (its name and MLflow run). Returns the MLflow
    parent run id and each stage task's final state (``Completed``, or ``Cached`` when it was skipped because its
    inputs, code and outputs are unchanged); stage-two tasks are named ``stage_two@<variant>``.
    """
    params = apply_overrides(read_params_file(params_file), overrides)
    check_effective_params(params, params_file)
    runtime = params.get("runtime", {})
    graph = pipeline_graph(params)
    states: dict[str, str] = {}

    def call(stage_task, stage: str, *args):
        """Run from the cache only while the stage's outputs are intact on disk; note Completed or Cached. The
        task's outputs and code digest come from dvc.yaml (its outs, metrics, plots; its deps that are code)."""
        outputs = list(graph[stage].written)
        code = digest_paths(list(graph[stage].code), PACKAGE_ROOT)
        state = stage_task.with_options(refresh_cache=not outputs_intact(stage, outputs))(
            *args, outputs, code, return_state=True
        )
        states[stage] = state.name
        return state.result()

    with (
        _inside(workdir, params),
        pipeline_run(
            f"prefect flow{f' ({sweep})' if sweep else ''}",
            tags=_prefect_tags(sweep),
            parent_run_id=mlflow_parent_run_id,
        ) as parent,
    ):
        data = call(prepare_task, "prepare", params.get("prepare"))
        one = call(stage_one_task, "stage_one", params.get("stage_one"), runtime, data)
        pairs = call(pairs_task, "pairs", params.get("pairs"), runtime, data, one)
        variants = list(validate_section(train_stage_two.StageTwoParams, params.get("stage_two"), "stage_two").variants)
        two = [
            call(
                stage_two_task,
                f"stage_two@{variant}",
                variant_section(graph[f"stage_two@{variant}"], params),
                runtime,
                data,
                pairs,
                one,
                variant,
            )
            for variant in variants
        ]
        scores = call(evaluate_task, "evaluate", params.get("evaluate"), variants, runtime, data, one, two)
        call(report_task, "report", params, scores, two, digest_paths([str(report.SWEEP_DIR)]))
        log_run_metrics(parent, read_scores())
        # MLflow tag keys take no "@": stages.stage_two.msvae for the task stage_two@msvae
        set_run_tags(
            parent, {f"stages.{stage.replace('@', '.')}": state for stage, state in states.items()} | recorded_device()
        )
    print("stages: " + ", ".join(f"{stage} {state}" for stage, state in states.items()))
    return {"parent_run_id": parent, "task_states": states}


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set stage_one.betatcvae.beta=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    from pipeline.summary import print_summary

    result = multistage_pipeline(args.params, overrides)
    print_summary(result["parent_run_id"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
