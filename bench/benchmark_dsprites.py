"""The standard dSprites benchmark: every stage-one model, several seeds, scored by disentanglement_lib's protocol.

The setting is ``profiles/benchmark_dsprites.yaml``: binary dSprites at 64 x 64 (the whole 737,280-image grid,
10% held out of training), 10 latents, the conv 64x64 networks, batch 64, one value of each model's hyperparameter
from Locatello et al. (2019)'s grid. One *point* is a (model, seed): it trains with the project's training loop
(progress, atomic checkpoints, resume) for either

* ``--cpu-minutes B``: a fixed budget of process CPU time. The number of steps is set before training from the
  median CPU time of 30 timed steps on a throw-away copy of the model, so that every schedule knows the run's length
  (the annealed capacity reaches C_max after a third of the run, as 100,000 of the published 300,000 steps do);
  the CPU minutes actually spent are recorded beside the steps;
* ``--steps N``: a fixed number of steps (``--steps 300000`` with ``--learning-rate 1e-4`` is the published run,
  for a GPU worker),

then encodes the means of a uniform sample of the grid (``--factor-images``; the whole grid when 0) and scores
them as disentanglement_lib does: MIG on 10,000 points with 20 histogram bins; SAP with its linear-SVM protocol
(10,000 train and 5,000 test points); DCI with gradient-boosted trees (sklearn's 100 estimators, 10,000 train and
5,000 test points); the FactorVAE score (batches of 64, 10,000 training and 5,000 evaluation votes, latents whose
standard deviation is below 0.05 pruned). Each point writes ``bench/results/benchmark_dsprites/<model>-s<seed>.json``;
``--merge`` gathers them into ``bench/results/benchmark_dsprites.json`` (``<model>.mig_median``,
``<model>.mig_seeds``, ``<model>.per_factor_mig``, ... ), a markdown table beside it and the figure
``docs/studies/benchmark-dsprites/benchmark.png``.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.benchmark_dsprites --models betatcvae --seeds 0 --cpu-minutes 5
    .venv/bin/python -m bench.benchmark_dsprites --merge

The same points run as one Prefect deployment (``prefect.yaml``'s ``benchmark``, :mod:`pipeline.benchmark`).
The study and its results: docs/studies/benchmark-dsprites.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cpu_seconds, median_and_range

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "bench" / "results"
POINTS = RESULTS / "benchmark_dsprites"
SUMMARY = RESULTS / "benchmark_dsprites.json"
TABLE = RESULTS / "benchmark_dsprites.md"
FIGURE = PROJECT / "docs" / "studies" / "benchmark-dsprites" / "benchmark.png"
WORK = PROJECT / "bench" / "work" / "benchmark_dsprites"
PROFILE = "benchmark_dsprites"

#: the six models of the study: params leaves on top of the profile (DIP-VAE-I: lambda_d = 10 lambda_od)
MODELS: dict[str, dict[str, Any]] = {
    "betavae": {"stage_one.model": "betavae"},
    "annealedvae": {"stage_one.model": "annealedvae"},
    "betatcvae": {"stage_one.model": "betatcvae"},
    "dipvae_i": {"stage_one.model": "dipvae", "stage_one.dipvae.variant": "i", "stage_one.dipvae.lambda_d": 100.0},
    "dipvae_ii": {"stage_one.model": "dipvae", "stage_one.dipvae.variant": "ii", "stage_one.dipvae.lambda_d": 10.0},
    "factorvae": {"stage_one.model": "factorvae"},
}
LABELS = {
    "betavae": "beta-VAE",
    "annealedvae": "AnnealedVAE",
    "betatcvae": "beta-TCVAE",
    "dipvae_i": "DIP-VAE-I",
    "dipvae_ii": "DIP-VAE-II",
    "factorvae": "FactorVAE",
}
#: the published 300,000-step run's fraction of its length over which the annealed capacity rises
CAPACITY_FRACTION = 100000 / 300000
MIG_POINTS = 10000
#: dSprites' factors in the order of the grid (the records' JSON keeps its keys sorted)
FACTORS = ("shape", "scale", "orientation", "posX", "posY")
METRICS = ("mig", "sap", "dci.disentanglement", "dci.completeness", "dci.informativeness", "factorvae_score")


class BenchmarkError(ValueError):
    """A bad benchmark argument or input, named."""


def point_params(model: str, seed: int, overrides: dict[str, Any] | None = None) -> dict:
    """params.yaml with the benchmark profile, the model's leaves, the seed and ``overrides``; validated."""
    from pipeline.profiles import profiled_params

    if model not in MODELS:
        raise BenchmarkError(f"unknown model {model!r}; the benchmark's models: {', '.join(MODELS)}")
    params, _ = profiled_params(PROFILE, settings=MODELS[model] | {"stage_one.seed": seed} | dict(overrides or {}))
    return params


def _sections(params: dict):
    from stages.common import RuntimeParams, validate_section
    from stages.prepare import PrepareParams
    from stages.train_stage_one import StageOneParams

    source = f"profile {PROFILE}"
    return (
        validate_section(PrepareParams, params["prepare"], "prepare", source),
        validate_section(StageOneParams, params["stage_one"], "stage_one", source),
        validate_section(RuntimeParams, params.get("runtime", {}), "runtime", source),
    )


def measure_rate(stage_one, dataset, device, precision: str, steps: int = 30) -> float:
    """Steps per CPU-second of a throw-away copy of the model: the inverse of the median CPU time of ``steps`` steps
    (after 3 untimed ones), the median so that a step slowed by another process does not set the plan."""
    import torch

    from multistage.data.base import to_float
    from stages.train_stage_one import build_model

    model = build_model(stage_one, dataset, device, precision)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=stage_one.learning_rate)
    rng = np.random.default_rng(12345)
    train = dataset.train_indices
    times = []
    for step in range(steps + 3):
        started = cpu_seconds()
        rows = np.sort(train[rng.choice(len(train), stage_one.batch_size, replace=False)])
        out = model.objective(to_float(dataset.images[rows]).to(device), step)
        loss = out[0] if isinstance(out, tuple) else out
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 3:
            times.append(cpu_seconds() - started)
    return 1.0 / max(float(np.median(times)), 1e-6)


def run_point(
    model_name: str,
    seed: int,
    cpu_minutes: float | None = None,
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    factor_images: int = 100000,
    threads: int = 1,
    device_name: str = "auto",
    out_dir: Path = POINTS,
    work: Path = WORK,
    show_progress: bool = True,
    data_root: Path | None = None,
) -> dict:
    """Train and score one (model, seed) of the benchmark; writes and returns its JSON record. The prepared grid
    is cached under ``data_root`` (default ``bench/work``), the checkpoints under ``work``. A point whose record
    exists for the same plan is returned as it is (delete the record to score it again)."""
    import torch

    from bench.mig_per_minute import prepared_data
    from multistage.data.base import to_float
    from multistage.nn.precision import resolve_precision
    from multistage.train import LoopConfig, seed_everything, select_device, train
    from stages.common import atomic_write_json
    from stages.train_stage_one import build_model, load_data

    if (cpu_minutes is None) == (steps is None):
        raise BenchmarkError("give exactly one of cpu_minutes (a CPU-time budget) and steps")
    if cpu_minutes is not None and cpu_minutes <= 0:
        raise BenchmarkError(f"cpu_minutes must be positive, got {cpu_minutes}")
    if steps is not None and steps < 1:
        raise BenchmarkError(f"steps must be at least 1, got {steps}")
    params = point_params(model_name, seed, overrides)
    prepare, stage_one, runtime = _sections(params)
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    device = select_device(device_name)
    precision = resolve_precision(runtime.precision, device)
    dataset = load_data(prepared_data(prepare, data_root or PROJECT / "bench" / "work"))
    name = f"{model_name}-s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    side = work / f"{name}.plan.json"
    plan = json.loads(side.read_text()) if side.is_file() else {}
    # what sets the training (the scoring's evaluate.* leaves do not): a change re-plans and so retrains
    training = {k: v for k, v in (overrides or {}).items() if not k.startswith("evaluate.")}
    wanted = {"cpu_minutes": cpu_minutes, "steps": steps, "overrides": training, "threads": threads}
    if plan.get("wanted") != wanted:  # a new point, or one asked differently: plan it afresh
        seed_everything(seed)
        rate = measure_rate(stage_one, dataset, device, precision) if cpu_minutes is not None else None
        planned = steps if steps is not None else max(1, int(cpu_minutes * 60.0 * rate))
        plan = {"wanted": wanted, "steps": planned, "steps_per_cpu_second": rate, "cpu_minutes_spent": 0.0}
        atomic_write_json(side, plan)
    total = int(plan["steps"])
    done = out_dir / f"{name}.json"
    if done.is_file():  # finished with this plan: its record stands
        record = json.loads(done.read_text())
        if record.get("steps") == total and record.get("overrides") == dict(overrides or {}):
            return record
    leaves = {"stage_one.steps": total}
    if stage_one.model == "annealedvae":
        leaves["stage_one.annealedvae.capacity_steps"] = max(1, int(round(CAPACITY_FRACTION * total)))
    params = point_params(model_name, seed, dict(overrides or {}) | leaves)
    prepare, stage_one, runtime = _sections(params)

    seed_everything(seed)
    model = build_model(stage_one, dataset, device, precision)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=stage_one.learning_rate)
    images, train_rows = dataset.images, dataset.train_indices

    def step_fn(batch: np.ndarray, step: int):
        return model.objective(to_float(images[np.sort(train_rows[batch])]).to(device), step)

    fingerprint = json.dumps(
        {"point": name, "stage_one": stage_one.used(), "steps": total, "prepare": prepare.model_dump()}
        | {"runtime": runtime.model_dump(), "precision": precision},
        sort_keys=True,
        default=str,
    )
    checkpoint = work / f"{name}.pt"
    if plan.get("fingerprint") != fingerprint or not checkpoint.is_file():  # training starts from step 0
        plan["fingerprint"], plan["cpu_minutes_spent"] = fingerprint, 0.0
        atomic_write_json(side, plan)
    started = cpu_seconds()
    spent_before = float(plan.get("cpu_minutes_spent", 0.0))

    def callback(step: int, record: dict) -> None:
        plan["cpu_minutes_spent"] = spent_before + (cpu_seconds() - started) / 60.0
        atomic_write_json(side, plan)

    loop = LoopConfig(
        steps=total,
        batch_size=stage_one.batch_size,
        seed=seed,
        checkpoint_every=max(50, total // 10),
        log_every=max(1, min(100, total // 20)),
        progress_keys=("loss", "recon", *model.logged_terms),
    )
    result = train(
        model,
        optimizer,
        step_fn,
        len(train_rows),
        loop,
        checkpoint,
        fingerprint,
        callback=callback,
        description=f"benchmark {name}",
        show_progress=show_progress,
        extra_modules=model.auxiliary_state(),
    )
    if result.start_step < total:
        callback(total, {})
    train_cpu = float(plan["cpu_minutes_spent"])
    scoring_started = time.perf_counter()
    model.eval()
    scores = score(model, dataset, device, params["evaluate"], factor_images, seed)
    record = {
        "model": model_name,
        "label": LABELS[model_name],
        "seed": seed,
        "steps": total,
        "cpu_minutes_budget": cpu_minutes,
        "cpu_minutes": train_cpu,
        "images_per_cpu_second": (plan["steps_per_cpu_second"] or 0.0) * stage_one.batch_size or None,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": precision,
        "scoring_seconds": time.perf_counter() - scoring_started,
        "factor_images": scores.pop("factor_images"),
        "overrides": dict(overrides or {}),
        "protocol": {key: params["evaluate"].get(key) for key in ("mig_bins", "sap", "dci", "factorvae_score")},
        "stage_one": stage_one.used(),
        "scores": scores,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / f"{name}.json", record)
    return record


def score(model, dataset, device, evaluate: dict, factor_images: int, seed: int) -> dict:
    """disentanglement_lib's protocol on the encoder means of a uniform sample of the grid (module docstring)."""
    from multistage.evaluation.registry import METRICS, MetricInputs
    from multistage.metrics.dci import DciConfig
    from multistage.metrics.factorvae_score import FactorVaeScoreConfig
    from multistage.metrics.mig import mig_key, mutual_information_gap
    from multistage.metrics.sap import SapConfig
    from stages.train_stage_one import encode_all

    count = len(dataset)
    rows = np.arange(count) if not factor_images or factor_images >= count else None
    if rows is None:  # the same sample for every point: drawn with a fixed seed, independent of the point's
        rows = np.sort(np.random.default_rng(0).choice(count, size=factor_images, replace=False))
    mu = encode_all(model, dataset.images[rows] if len(rows) < count else dataset.images, device)["mu"]
    mu = mu.astype(np.float64)
    classes = dataset.factor_classes[rows]
    names = tuple(dataset.factor_names)
    rng = np.random.default_rng(seed)
    mig_rows = rng.choice(len(rows), size=min(MIG_POINTS, len(rows)), replace=False)
    bins = int(evaluate.get("mig_bins", 20))
    raw = mutual_information_gap(mu[mig_rows], classes[mig_rows], names, bins=bins)
    key = mig_key(bins)
    out: dict[str, Any] = {"factor_images": int(len(rows)), "mig": raw[key]}
    out |= {f"mig.{n}": raw[f"{key}.{n}"] for n in names}
    inputs = MetricInputs(
        mu=mu,
        representation=mu,
        factor_classes=classes,
        factor_names=names,
        factor_sizes=tuple(dataset.factor_sizes),
        categorical_factors=("shape",),
    )
    configs = {
        "sap": SapConfig(**evaluate["sap"]),
        "dci": DciConfig(**evaluate["dci"]),
        "factorvae_score": FactorVaeScoreConfig(**evaluate["factorvae_score"]),
    }
    for metric, config in configs.items():
        for key, value in METRICS[metric](inputs, config, seed).items():
            key = key.removeprefix("x.").replace("dci.gbt.", "dci.")
            out[key] = value
    kl_rows = mu[mig_rows]
    out["active_units"] = float((kl_rows.std(axis=0, ddof=1) >= 0.05).sum())  # disentanglement_lib's pruning
    return out


def merge(
    folder: Path = POINTS,
    summary_path: Path = SUMMARY,
    table_path: Path = TABLE,
    figure: Path = FIGURE,
    records: list[dict] | None = None,
):
    """Gather the points (``records``, or every JSON in ``folder``) into the summary JSON, the markdown table and
    the figure; returns the table. Points of one model run differently (budget, steps, overrides) are an error."""
    from stages.common import atomic_write_json

    if records is None:
        records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    if not records:
        raise BenchmarkError(f"no benchmark points in {folder}; run some first (see --help)")
    by_model: dict[str, list[dict]] = {}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    for model, runs in by_model.items():
        settings = {
            json.dumps(
                {"budget": r["cpu_minutes_budget"], "overrides": r.get("overrides")}
                | {"factor_images": r["factor_images"]}
                | ({"steps": r["steps"]} if r["cpu_minutes_budget"] is None else {}),
                sort_keys=True,
            )
            for r in runs
        }
        if len(settings) > 1:
            raise BenchmarkError(
                f"the points of {model} in {folder} were run differently, so their median means nothing: "
                f"{sorted(settings)}; move the others away"
            )
    summary: dict[str, Any] = {}
    for model, runs in sorted(by_model.items(), key=lambda item: list(MODELS).index(item[0])):
        runs.sort(key=lambda r: r["seed"])
        summary[f"{model}.seeds"] = [r["seed"] for r in runs]
        summary[f"{model}.steps"] = [r["steps"] for r in runs]
        summary[f"{model}.cpu_minutes"] = [round(r["cpu_minutes"], 3) for r in runs]
        for metric in METRICS:
            values = [float(r["scores"][metric]) for r in runs]
            key = metric.replace(".", "_")
            summary[f"{model}.{key}_median"] = float(np.median(values))
            summary[f"{model}.{key}_range"] = [float(min(values)), float(max(values))]
            summary[f"{model}.{key}_seeds"] = values
        factors = factor_order(runs[0])
        summary[f"{model}.per_factor_mig"] = {
            f: float(np.median([r["scores"][f"mig.{f}"] for r in runs])) for f in factors
        }
        summary[f"{model}.factors_captured_median"] = float(
            np.median([sum(r["scores"][f"mig.{f}"] >= 0.1 for f in factors) for r in runs])
        )
    summary["protocol"] = {
        "profile": f"profiles/{PROFILE}.yaml",
        "factor_images": sorted({r["factor_images"] for r in records}),
        "threads": sorted({r["threads"] for r in records}),
        "cpu_minutes_budget": sorted({r["cpu_minutes_budget"] for r in records}, key=lambda v: (v is None, v)),
        "learning_rate": sorted({r["stage_one"]["learning_rate"] for r in records}),
        "dci_rounds": sorted({r["protocol"]["dci"]["gbt_estimators"] for r in records}),
        "overrides": sorted({json.dumps(r["overrides"], sort_keys=True) for r in records}),
        "mig_points": MIG_POINTS,
        "sap": records[0]["protocol"]["sap"],
        "factorvae_score": records[0]["protocol"]["factorvae_score"],
    }
    atomic_write_json(summary_path, summary)
    table = markdown_table(by_model)
    table_path.write_text(table)
    draw(by_model, figure)
    return table


def factor_order(record: dict) -> list[str]:
    """The factors of a record's per-factor MIG, in the grid's order (others after, alphabetically)."""
    found = [k.removeprefix("mig.") for k in record["scores"] if k.startswith("mig.")]
    return [f for f in FACTORS if f in found] + sorted(f for f in found if f not in FACTORS)


def markdown_table(by_model: dict[str, list[dict]]) -> str:
    lines = [
        "| model | seeds | steps | CPU-min | MIG | SAP | DCI D | DCI C | DCI I | FactorVAE score "
        "| per-factor MIG (shape / scale / orientation / posX / posY) |",
        "| --- " * 11 + "|",
    ]
    for model in MODELS:
        runs = by_model.get(model)
        if not runs:
            continue
        factors = factor_order(runs[0])
        per_factor = " / ".join(f"{np.median([r['scores'][f'mig.{f}'] for r in runs]):.2f}" for f in factors)
        cells = [median_and_range([r["scores"][m] for r in runs]) for m in METRICS]
        lines.append(
            f"| {LABELS[model]} | {len(runs)} | {int(np.median([r['steps'] for r in runs]))} | "
            f"{np.median([r['cpu_minutes'] for r in runs]):.1f} | " + " | ".join(cells) + f" | {per_factor} |"
        )
    return "\n".join(lines) + "\n"


def draw(by_model: dict[str, list[dict]], path: Path) -> None:
    """One panel per metric: each seed a dot, the median a bar, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if m in by_model]
    titles = {
        "mig": "MIG",
        "sap": "SAP",
        "dci.disentanglement": "DCI disentanglement",
        "dci.completeness": "DCI completeness",
        "dci.informativeness": "DCI informativeness",
        "factorvae_score": "FactorVAE score",
    }
    figure, axes = plt.subplots(1, len(METRICS), figsize=(3.1 * len(METRICS), 4.2))
    for axis, metric in zip(axes, METRICS):
        for position, model in enumerate(models):
            values = [r["scores"][metric] for r in by_model[model]]
            axis.scatter([position] * len(values), values, s=22, color=f"C{position}", zorder=3)
            axis.hlines(np.median(values), position - 0.3, position + 0.3, color="black", linewidth=1.5)
        axis.set_xticks(range(len(models)), [LABELS[m] for m in models], rotation=45, ha="right")
        axis.set_title(titles[metric])
        axis.set_ylim(0, 1)
        axis.grid(axis="y", alpha=0.3)
    records = [r for runs in by_model.values() for r in runs]
    budget = sorted({r["cpu_minutes_budget"] for r in records}, key=lambda v: (v is None, v))
    figure.suptitle(
        "Binary dSprites 64x64, disentanglement_lib's protocol; dots: seeds, bars: medians; "
        + (f"{budget[0]:g} CPU-minutes per run" if len(budget) == 1 and budget[0] else "see the table for lengths")
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"of: {', '.join(MODELS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--cpu-minutes", type=float, default=None, help="CPU-time budget of training per point")
    budget.add_argument("--steps", type=int, default=None, help="steps per point (300000: the published run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params leaf (repeatable)")
    parser.add_argument("--factor-images", type=int, default=100000, help="grid images scored (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=POINTS,
        help="where each point's JSON goes; with --merge, another folder's points go to <out-dir>.json, .md and .png",
    )
    parser.add_argument("--work", type=Path, default=WORK, help="checkpoints and plans")
    parser.add_argument("--data-root", type=Path, default=None, help="the prepared grid's cache (bench/work)")
    parser.add_argument("--merge", action="store_true", help="gather the points into the summary, table, figure")
    args = parser.parse_args(argv)
    from stages.common import InputError, ParamsError

    try:
        if args.merge:
            if args.out_dir.resolve() == POINTS.resolve():
                print(merge(), end="")
            else:  # another set of points (a lever): its summary, table and figure beside its folder
                folder = args.out_dir
                paths = (folder.with_suffix(suffix) for suffix in (".json", ".md", ".png"))
                print(merge(folder, *paths), end="")
            return 0
        if args.cpu_minutes is None and args.steps is None:
            raise BenchmarkError("give --cpu-minutes or --steps")
        from pipeline.profiles import parse_settings

        overrides = parse_settings(args.set)
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            raise BenchmarkError(f"unknown models {unknown}; the benchmark's models: {', '.join(MODELS)}")
    except (BenchmarkError, ParamsError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = []
    for seed in args.seeds:  # every model's first seed first: a cut-short sweep still compares them all
        for model in args.models:
            try:
                record = run_point(
                    model,
                    seed,
                    args.cpu_minutes,
                    args.steps,
                    copy.deepcopy(overrides),
                    args.factor_images,
                    args.threads,
                    args.device,
                    out_dir=args.out_dir,
                    work=args.work,
                    data_root=args.data_root,
                )
            except (BenchmarkError, ParamsError, InputError) as error:  # the same for every point: stop
                print(f"error: {error}", file=sys.stderr)
                return 2
            except Exception as error:  # noqa: BLE001 - one point's failure (a diverged loss) does not stop the rest
                print(f"error: point {model}-s{seed} failed: {type(error).__name__}: {error}", file=sys.stderr)
                failed.append(f"{model}-s{seed}")
                continue
            shown = {k: round(v, 3) for k, v in record["scores"].items() if not k.startswith(("sap.", "dci."))}
            print(json.dumps({"point": f"{model}-s{seed}", "steps": record["steps"]} | shown), flush=True)
    if failed:
        print(f"error: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
