"""Disentanglement per CPU-minute: MIG of a stage-one model against wall-clock minutes of training.

One invocation is one attempt: a stage-one configuration (params.yaml's ``prepare`` and ``stage_one`` with
``--set key=value`` overrides, validated as the stages validate them) trained by the project's training loop for
at most ``--minutes`` of training time (data reads included, scoring excluded), scored every ``--eval-every``
minutes with the histogram MIG of the held-out encoder means, with and without shape. Every attempt is an MLflow
run (experiment ``mig-per-minute``) and a JSON file ``bench/results/mig_study/<name>.json``; ``--summarise``
gathers them into ``bench/results/mig_study.md`` and ``docs/mig_vs_minutes.png``. The prepared data is cached
under ``bench/work/`` by the digest of the ``prepare`` section.

    .venv/bin/python -m bench.mig_per_minute --name default-s0 --minutes 20 --threads 1 --set stage_one.seed=0
    .venv/bin/python -m bench.mig_per_minute --summarise

The study and its results: docs/studies/mig-per-minute.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import median_and_range

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "bench" / "results" / "mig_study"
WORK = PROJECT / "bench" / "work"
EXPERIMENT = "mig-per-minute"
TABLE = PROJECT / "bench" / "results" / "mig_study.md"
PLOT = PROJECT / "docs" / "mig_vs_minutes.png"


class _BudgetSpent(Exception):
    """Raised from the training loop's callback once the time budget is used."""


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. stage_one.batch_size=256")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def configuration(overrides: dict, params_file: Path) -> dict:
    """params.yaml with the overrides applied; ``prepare`` and ``stage_one`` validated as the stages do."""
    from stages.common import apply_overrides, read_params_file

    params = apply_overrides(read_params_file(params_file), overrides)
    return params


def prepared_data(prepare_params, root: Path = WORK) -> Path:
    """The prepared dataset for this ``prepare`` section, built once into ``<root>/data-<digest>`` (``root``:
    ``bench/work`` by default)."""
    from stages.common import StagingDirectory, fingerprint
    from stages.prepare import _make, check_selection

    check_selection(prepare_params)
    folder = Path(root) / f"data-{fingerprint(prepare_params.model_dump())[:12]}"
    if not (folder / "meta.json").exists():
        print(f"preparing {prepare_params.dataset} into {folder}", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with StagingDirectory(folder) as tmp:
            dataset = _make(prepare_params, tmp, lambda done, total: None)
            del dataset
    return folder


def score(model, dataset, device) -> dict[str, float]:
    """Histogram MIG (20 bins) of the encoder means of the held-out images, all factors and without shape."""
    from multistage.metrics.mig import mutual_information_gap
    from stages.train_stage_one import encode_all

    test = dataset.test_indices
    model.eval()
    posterior = encode_all(model, dataset.images[np.sort(test)], device)
    model.train()
    classes = dataset.factor_classes[np.sort(test)]
    exclude = ("shape",) if "shape" in dataset.factor_names else ()
    raw = mutual_information_gap(posterior["mu"], classes, dataset.factor_names, bins=20, exclude_factors=exclude)
    out = {"mig": raw["mig.histogram20"]}
    if exclude:
        out["mig.no_shape"] = raw["mig.histogram20.no_shape"]
    out |= {f"mig.{name}": raw[f"mig.histogram20.{name}"] for name in dataset.factor_names}
    kl = 0.5 * (posterior["mu"] ** 2 + np.exp(posterior["logvar"]) - posterior["logvar"] - 1).mean(axis=0)
    out["active_units"] = float((kl > 0.01).sum())
    return out


def attempt(args) -> dict:
    import torch

    from multistage.data.base import to_float
    from multistage.nn.precision import resolve_precision
    from multistage.train import LoopConfig, seed_everything, select_device, train
    from stages.common import RuntimeParams, validate_section
    from stages.prepare import PrepareParams
    from stages.tracking import EXPERIMENT_VARIABLE, stage_run
    from stages.train_stage_one import StageOneParams, build_model, check_model_options, load_data

    overrides = parse_overrides(args.set)
    params = configuration(overrides, Path(args.params))
    prepare = validate_section(PrepareParams, params.get("prepare"), "prepare", args.params)
    stage_one = validate_section(StageOneParams, params.get("stage_one"), "stage_one", args.params)
    runtime = validate_section(RuntimeParams, params.get("runtime", {}), "runtime", args.params)
    check_model_options(stage_one, source=args.params)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = select_device(args.device)
    seed_everything(stage_one.seed)

    data = prepared_data(prepare)
    dataset = load_data(data)
    precision = resolve_precision(runtime.precision, device)
    model = build_model(stage_one, dataset, device, precision)
    if args.contiguous:
        model = model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=stage_one.learning_rate)
    train_indices, images = dataset.train_indices, dataset.images

    def step_fn(batch: np.ndarray, step: int):
        x = to_float(images[np.sort(train_indices[batch])]).to(device)
        return model.objective(x, step)

    budget = args.minutes * 60.0
    marks = list(np.arange(args.eval_every, args.minutes + 1e-9, args.eval_every) * 60.0)
    rows: list[dict] = []
    clock = {"start": 0.0, "paused": 0.0, "last": {}}
    checkpoint = WORK / "checkpoints" / f"{args.name}.pt"
    checkpoint.unlink(missing_ok=True)  # the clock cannot resume, so neither does the attempt

    config = {
        "prepare": prepare.model_dump(),
        "stage_one": stage_one.used(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": precision,
        "minutes": args.minutes,
        "contiguous": bool(args.contiguous),
        "overrides": overrides,
    }
    os.environ[EXPERIMENT_VARIABLE] = EXPERIMENT
    with stage_run(args.name, config) as tracker:
        tracker.set_tags({"study": "mig_per_minute", "attempt": args.name})

        def evaluate(step: int, elapsed: float) -> None:
            paused = time.perf_counter()
            scores = score(model, dataset, device)
            row = {
                "minutes": elapsed / 60.0,
                "steps": step,
                "images": step * stage_one.batch_size,
                "images_per_second": step * stage_one.batch_size / max(elapsed, 1e-9),
            } | scores
            row |= {f"train.{k}": v for k, v in clock["last"].items() if k not in ("step", "images_per_second")}
            rows.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "minutes"}, step=int(round(elapsed)))
            print(
                f"[{args.name}] {row['minutes']:5.1f} min  step {step:6d}  {row['images_per_second']:6.0f} img/s  "
                f"MIG {scores['mig']:.3f}  no shape {scores.get('mig.no_shape', float('nan')):.3f}  "
                f"active {scores['active_units']:.0f}",
                flush=True,
            )
            clock["paused"] += time.perf_counter() - paused

        def callback(step: int, record: dict) -> None:
            clock["last"] = record
            elapsed = time.perf_counter() - clock["start"] - clock["paused"]
            while marks and elapsed >= marks[0]:
                marks.pop(0)
                evaluate(step, elapsed)
            if elapsed >= budget:
                raise _BudgetSpent

        loop = LoopConfig(
            steps=10**9,
            batch_size=stage_one.batch_size,
            seed=stage_one.seed,
            checkpoint_every=10**9,
            log_every=args.log_every,
        )
        clock["start"] = time.perf_counter()
        try:
            train(
                model,
                optimizer,
                step_fn,
                len(train_indices),
                loop,
                checkpoint,
                "study",
                callback=callback,
                description=args.name,
                show_progress=False,
                extra_modules=model.auxiliary_state(),
            )
        except _BudgetSpent:
            pass
    result = {"name": args.name, "config": config, "rows": rows, "run_id": tracker.run_id}
    RESULTS.mkdir(parents=True, exist_ok=True)
    from stages.common import atomic_write_json

    atomic_write_json(RESULTS / f"{args.name}.json", result)
    return result


def _group(name: str) -> str:
    """``default-s1`` -> ``default``: attempts that differ only in the seed suffix form one configuration."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


COMMON_MINUTES = 12.5


def _score_at(rows: list[dict], minutes: float) -> float:
    """The MIG of the last score taken by ``minutes`` of training (scores land a few seconds past each mark)."""
    taken = [row for row in rows if row["minutes"] <= minutes * 1.02]
    return taken[-1]["mig"] if taken else float("nan")


def _pixels(prepare: dict) -> str:
    """The side of the images an attempt trained on: prepare.image_size, or when unset dSprites' own 64."""
    if prepare.get("image_size"):
        return str(prepare["image_size"])
    return "64" if prepare.get("dataset") == "dsprites" else "the dataset's"


def summarise(limit_minutes: float = 30.0) -> str:
    """The study's table (markdown) and plot from every ``bench/results/mig_study/*.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    if not results:
        raise SystemExit(f"no attempts in {RESULTS}; run an attempt first")
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(_group(result["name"]), []).append(result)

    lines = [
        "| configuration | what changes | px | seeds | threads | minutes | steps | images/s "
        f"| MIG at {COMMON_MINUTES} min (median, range) | MIG at the end (median, range) "
        "| MIG without shape at the end (median, range) | first minute MIG >= 0.2 | best MIG (minute) |",
        "| --- " * 13 + "|",
    ]
    pixels = {group: _pixels(members[0]["config"]["prepare"]) for group, members in groups.items()}
    for group, members in groups.items():
        finals = [m["rows"][-1] for m in members if m["rows"]]
        if not finals:
            continue
        mig = np.array([f["mig"] for f in finals])
        # every attempt ran at least COMMON_MINUTES: the score at that time compares configurations and seeds
        # whatever their length
        common = np.array([_score_at(m["rows"], COMMON_MINUTES) for m in members if m["rows"]])
        no_shape = np.array([f.get("mig.no_shape", np.nan) for f in finals])
        reached, best = [], []
        for m in members:
            top = max(m["rows"], key=lambda r: r["mig"])
            best.append(f"{top['mig']:.3f} ({top['minutes']:.1f})")
            hit = [r["minutes"] for r in m["rows"] if r["mig"] >= 0.2]
            reached.append(f"{hit[0]:.1f}" if hit else "-")

        lengths = "/".join(sorted({f"{f['minutes']:.1f}" for f in finals}, key=float))
        overrides = members[0]["config"]["overrides"]
        change = (
            ", ".join(
                f"{k.removeprefix('stage_one.')}={v}"
                for k, v in overrides.items()
                if not k.endswith(".seed") and k != "prepare.image_size"
            )
            or "params.yaml as is"
        )
        if members[0]["config"].get("contiguous"):
            change += ", contiguous NCHW"
        lines.append(
            f"| {group} | {change} | {pixels[group]} | {len(finals)} | "
            f"{members[0]['config']['threads']} | "
            f"{lengths} | "
            f"{int(np.median([f['steps'] for f in finals]))} | "
            f"{np.median([f['images_per_second'] for f in finals]):.0f} | "
            f"{median_and_range(common)} | {median_and_range(mig)} | "
            f"{median_and_range(no_shape)} | "
            f"{', '.join(reached)} | {', '.join(best)} |"
        )
    table = "\n".join(lines) + "\n"
    TABLE.write_text(table)

    figure, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    colours = plt.get_cmap("tab20").colors
    for index, (group, members) in enumerate(groups.items()):
        colour = colours[index % len(colours)]
        for number, member in enumerate(members):
            minutes = [r["minutes"] for r in member["rows"]]
            for axis, key in zip(axes, ("mig", "mig.no_shape")):
                axis.plot(
                    minutes,
                    [r.get(key, np.nan) for r in member["rows"]],
                    marker="o",
                    markersize=3,
                    color=colour,
                    alpha=0.85,
                    label=f"{group} ({pixels[group]} px)" if number == 0 else None,
                )
    for axis, title in zip(axes, ("MIG, all five factors", "MIG without shape")):
        axis.axhline(0.2, color="grey", linestyle="--", linewidth=1)
        axis.axvline(limit_minutes, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("minutes of training (scoring excluded)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("histogram MIG (20 bins), held-out images")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)
    plt.close(figure)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="the attempt's name (a trailing -s<N> groups seeds of one configuration)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training-time budget")
    parser.add_argument("--eval-every", type=float, default=2.5, help="minutes of training between scores")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (multistage.train.select_device)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between clock checks")
    parser.add_argument("--contiguous", action="store_true", help="keep NCHW (the layout before channels_last)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. stage_one.batch_size=256 (repeatable)",
    )
    parser.add_argument("--params", default=str(PROJECT / "params.yaml"))
    parser.add_argument("--summarise", action="store_true", help="write the table and plot from the results")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(), end="")
        return
    if not args.name:
        parser.error("--name is required for an attempt")
    from stages.common import InputError, ParamsError

    try:
        attempt(args)
    except (ParamsError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
