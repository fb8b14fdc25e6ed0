"""DVC stage ``chain@<name>``: train the stage chain declared as ``chains.<name>`` in params.yaml, in order.

``python -m stages.chain pendulum`` (dvc.yaml runs one such stage per declared chain, ``foreach: ${chains}``).
A declaration names its data, the training defaults, its nodes and, for the pendulum, its evaluation.
Everything is checked before anything is computed (keys and values, the graph, every node's options); a problem
is one message naming the key, exit status 2. Outputs: ``chains/<name>/`` (the trained chain, its figures,
``held_out_z.csv``) and ``metrics/chain_<name>.json``; checkpoints in ``checkpoints/chain_<name>/`` (not a DVC
output), so a rerun after a kill resumes each node. The MLflow run ``chain@<name>`` gets the params, the device,
per-step terms, the final metrics and the figures. The declaration, its checks and its outputs: docs/chains.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from multistage.chains.nodes import NODE_KINDS
from multistage.chains.pendulum import PendulumEvaluation
from multistage.data.pendulum import PendulumOptions
from stages.common import (
    PARAMS_FILE,
    ParamsError,
    StageParams,
    StagingDirectory,
    atomic_write_bytes,
    atomic_write_json,
    code_digest,
    fingerprint,
    load_runtime,
    read_params_file,
    run_cli,
    setup_runtime,
    training_summary,
    validate_section,
)
from stages.train_stage_one import TrainingParams

OUTPUT_ROOT = Path("chains")
METRICS_PATTERN = "metrics/chain_{name}.json"
CHECKPOINT_PATTERN = "checkpoints/chain_{name}"


def _params_from_dataclass(name: str, config_class: type, exclude: tuple[str, ...] = (), **extra) -> type:
    """A pydantic section whose keys are ``config_class``'s fields (types and defaults taken from it, the one
    source of truth) plus ``extra``; the values' ranges are checked by the dataclass itself."""
    hints = typing.get_type_hints(config_class)
    own = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(config_class) if f.name not in exclude}
    return create_model(name, __base__=StageParams, **extra, **own)


GRID_FIELDS = ("length_steps", "damping_steps", "mass_steps", "initial_angle_steps")
PendulumDataParams = _params_from_dataclass(
    "PendulumDataParams",
    PendulumOptions,
    exclude=GRID_FIELDS,
    source=(Literal["pendulum"], "pendulum"),
    series=(int, Field(8000, ge=2)),
    test_series=(int, Field(1000, ge=1)),
    seed=(int, 0),
)
PendulumDataParams.__doc__ = (
    "``chains.<name>.data`` for ``source: pendulum``: how many series, the seed, and the factor ranges and "
    "integration settings of ``multistage.data.pendulum.PendulumOptions`` (its grid ``*_steps`` aside: factors are "
    "drawn uniformly in [min, max]; ``multistage.chains.pendulum.PendulumTableOptions``)."
)
PendulumEvaluationParams = _params_from_dataclass("PendulumEvaluationParams", PendulumEvaluation)
PendulumEvaluationParams.__doc__ = "``chains.<name>.evaluation``: ``multistage.chains.pendulum.PendulumEvaluation``."


class ChainTrainingParams(TrainingParams):
    """``chains.<name>.training``: every node's training-loop defaults (stage one's keys, and gradient_clip)."""

    gradient_clip: float | None = Field(None, gt=0.0)


NodeTrainingParams = create_model(
    "NodeTrainingParams",
    __base__=StageParams,
    **{
        name: ((Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation) | None, None)
        for name, field in ChainTrainingParams.model_fields.items()
    },
)
NodeTrainingParams.__doc__ = (
    "``chains.<name>.nodes.<node>.training``: what this node sets differently from the "
    "chain's ``training`` (null: the chain's value)."
)


class NodeParams(StageParams):
    """One node: ``kind`` models ``output`` given ``inputs``; ``options`` are the kind's config fields."""

    kind: Literal[NODE_KINDS]
    output: str = Field(min_length=1)
    inputs: list[str] = []
    options: dict[str, Any] = {}
    training: NodeTrainingParams = NodeTrainingParams()


class ChainParams(StageParams):
    """``chains.<name>``: a chain declaration (module docstring)."""

    data: PendulumDataParams = PendulumDataParams()
    training: ChainTrainingParams = ChainTrainingParams()
    # validated one by one below (NodeParams, PendulumEvaluationParams), so that an error lists the right keys
    nodes: dict[str, Any]
    evaluation: dict[str, Any] | None = None


def _bad(source: str, key: str, message: str) -> ParamsError:
    return ParamsError(f"{source}: bad value for '{key}': {message}")


def load_params(name: str, params_file: str | Path = PARAMS_FILE) -> ChainParams:
    """``chains.<name>`` validated, graph and node options included (module docstring)."""
    chains = read_params_file(params_file).get("chains")
    if not isinstance(chains, dict) or name not in chains:
        declared = ", ".join(sorted(chains)) if isinstance(chains, dict) and chains else "none"
        raise ParamsError(f"{params_file}: no chain '{name}' in section 'chains' (declared: {declared})")
    params = validate_section(ChainParams, chains[name], f"chains.{name}", str(params_file))
    if not params.nodes:
        raise _bad(str(params_file), f"chains.{name}.nodes", "a chain needs at least one node")
    nodes = {
        node: validate_section(NodeParams, raw, f"chains.{name}.nodes.{node}", str(params_file))
        for node, raw in params.nodes.items()
    }
    evaluation = (
        None
        if params.evaluation is None
        else validate_section(
            PendulumEvaluationParams, params.evaluation, f"chains.{name}.evaluation", str(params_file)
        )
    )
    params = params.model_copy(update={"nodes": nodes, "evaluation": evaluation})
    declaration(name, params, str(params_file))
    return params


def declaration(name: str, params: ChainParams, source: str = PARAMS_FILE):
    """(chain spec with each node's training settings, data options, evaluation) — every check of the module
    docstring, a :class:`ParamsError` naming the key on the first problem."""
    from multistage.chains import ChainError, chain_from_mapping, validate_chain, with_training
    from multistage.chains.pendulum import VARIABLES, PendulumTableOptions

    prefix = f"chains.{name}"
    data = params.data.model_dump(exclude={"source"})
    try:
        options = PendulumTableOptions(
            series=data.pop("series"),
            test_series=data.pop("test_series"),
            seed=data.pop("seed"),
            simulator=PendulumOptions(**data),
        )
    except ValueError as error:
        raise _bad(source, f"{prefix}.data", str(error)) from None
    nodes = {node: spec.model_dump() for node, spec in params.nodes.items()}
    try:
        spec = with_training(chain_from_mapping(name, nodes), params.training.model_dump())
        ordered = validate_chain(spec, VARIABLES)
    except ChainError as error:
        raise _bad(source, f"{prefix}.{error.key}", error.message) from None
    evaluation = None
    if params.evaluation is not None:
        try:
            evaluation = PendulumEvaluation(**params.evaluation.model_dump())
        except ValueError as error:
            raise _bad(source, f"{prefix}.evaluation", str(error)) from None
        if evaluation.latent_node not in spec.node_names or params.nodes[evaluation.latent_node].kind != "residual_vae":
            raise _bad(
                source,
                f"{prefix}.evaluation.latent_node",
                f"{evaluation.latent_node!r} is not a residual_vae node of the chain "
                f"(nodes: {', '.join(spec.node_names)})",
            )
        if evaluation.observed not in {node.output for node in ordered}:
            raise _bad(source, f"{prefix}.evaluation.observed", f"{evaluation.observed!r} is not the output of a node")
        if options.test_series < evaluation.held_out:
            raise _bad(
                source,
                f"{prefix}.evaluation.held_out",
                f"{evaluation.held_out} held-out sequences asked for, but data.test_series is {options.test_series}",
            )
    return spec, options, evaluation


def _write_held_out(path: Path, figure_data: dict, table, rows) -> None:
    import numpy as np

    z = figure_data["z"]
    columns = {"row": rows, **{f: np.asarray(table.values[f][rows]).reshape(-1) for f in ("length", "damping", "mass")}}
    columns |= {f"z_{j}": z[:, j] for j in range(z.shape[1])}
    lines = [",".join(columns)]
    lines += [",".join(f"{columns[c][i]:.6g}" for c in columns) for i in range(len(rows))]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def run(name: str, params: ChainParams, device, tracker=None, show_progress: bool = True) -> dict:
    """Simulate the data, train the chain, evaluate it and write the outputs (module docstring)."""
    from multistage.chains import ChainError, save_chain, train_chain
    from multistage.chains.pendulum import evaluate_pendulum, pendulum_figures, simulate_table
    from multistage.viz import plot_curves

    spec, options, evaluation = declaration(name, params)
    started = time.perf_counter()
    table = simulate_table(options)

    def callback(node: str, step: int, record: dict) -> None:
        if tracker is not None:
            tracker.log_metrics({f"chain.{node}.train.{k}": v for k, v in record.items() if k != "step"}, step=step)

    try:
        chain = train_chain(
            spec,
            table,
            Path(CHECKPOINT_PATTERN.format(name=name)),
            device,
            # the simulated data and the code the chain stage runs (a code change retrains)
            data_fingerprint=fingerprint(params.data.model_dump(), code_digest("chain")),
            callback=callback,
            show_progress=show_progress,
        )
    except ChainError as error:  # an option that only the data's shapes reveal as wrong
        raise _bad(PARAMS_FILE, f"chains.{name}.{error.key}", error.message) from None
    summary: dict[str, float] = {}
    for node, report in chain.reports.items():
        summary |= training_summary(f"chain.{node}", report.result)
        summary |= {f"chain.{node}.test.{k}": v for k, v in report.test_logs.items()}
    metrics, figure_data = (
        evaluate_pendulum(chain, table, options, evaluation, device) if evaluation is not None else ({}, None)
    )
    summary |= metrics
    output = OUTPUT_ROOT / name
    with StagingDirectory(output) as tmp:
        save_chain(chain, tmp / "nodes", extra={"data": params.data.model_dump(), "device": str(device)})
        for node, report in chain.reports.items():
            terms = ("loss", *chain.nodes[node].logged_terms)
            plot_curves(
                tmp / "figures" / f"curves_{node}.png", report.result.history, terms, f"{name}: {node} ({report.kind})"
            )
        if figure_data is not None:
            pendulum_figures(tmp / "figures", figure_data, metrics)
            _write_held_out(tmp / "held_out_z.csv", figure_data, table, table.test_rows[: evaluation.held_out])
    summary["chain.seconds"] = time.perf_counter() - started
    atomic_write_json(METRICS_PATTERN.format(name=name), summary)
    if tracker is not None:
        tracker.log_metrics(summary)
        for figure in sorted((output / "figures").glob("*.png")):
            tracker.log_artifact(figure, "figures")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m stages.chain", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the chain to train: a key of the 'chains' section of params.yaml")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    params = load_params(args.name, args.params)
    runtime = load_runtime(args.params)
    device = setup_runtime(runtime, params.training.seed)
    from stages.tracking import stage_run

    stage = f"chain@{args.name}"
    with stage_run(stage, {"chain": args.name, **params.model_dump(), "device": str(device)}) as tracker:
        tracker.set_tags({"device": str(device), "chain": args.name})
        summary = run(args.name, params, device, tracker=tracker, show_progress=not args.no_progress)
    pieces = [f"chain {args.name}: {len(params.nodes)} nodes in {summary['chain.seconds']:.0f} s"]
    if "pendulum.mass_abs_pearson_r.posterior_mean" in summary:
        pieces.append(
            f"|r(z, mass)| = {summary['pendulum.mass_abs_pearson_r.posterior_mean']:.3f} on "
            f"{summary['pendulum.held_out_sequences']} held-out sequences"
        )
        for factor in ("length", "damping"):
            period, decay = (
                summary[f"pendulum.traverse_{factor}.{quantity}_relative_change.model"]
                for quantity in ("period", "decay")
            )
            pieces.append(f"traversing {factor}: period {period:+.2f}, decay {decay:+.2f} (relative changes)")
    print(", ".join(pieces))
    return summary


if __name__ == "__main__":
    run_cli(main)
