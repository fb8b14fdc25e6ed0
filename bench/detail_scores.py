"""What the scores that see detail cost the evaluate stage, and how their probe was chosen, on the embedded default's
data (textured dSprites at 32 px, 60,000 images, 10 % test split).

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.detail_scores cost     # seconds the new work adds to evaluate
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.detail_scores choice   # probe features: raw pixels vs the map
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.detail_scores robustness  # blur and missing grating vs the probes
    .venv/bin/python -m bench.detail_scores threads   # the Fréchet distances at 1 and 2 torch threads, 2 seeds

The data are generated into ``--work-dir`` with ``multistage.data.dsprites.make_dsprites`` (as ``prepare`` makes
them by default). ``cost`` times the parts the detail scores add, with the default ``evaluate`` params: training
the detail network, the probes' features and fits on their training rows, the features of X, Y and one X-hat
(``eval_images`` held-out images; Y and X-hat stand-ins: X blurred, the cost does not depend on the model), the
foreground errors, the detail Fréchet distances and the probes' scores; wall and CPU seconds of each, with the load
average. ``choice`` fits ridge probes on ``--probe-images`` training-split images, on the raw pixels and on
``detail_feature_map``, and prints the R^2 of each column on the real held-out images. ``robustness`` fits the
probes three ways (one probe on the whole map; each column on its feature group; groups and a blurred copy of
every fitting image) and scores 2,000 held-out images drawn as they are, in their true colours without the
grating, as the conditional mean (the true colours at the grating's mean intensity, without the grating: what a
decoder that cannot draw the grating paints at best) sharp and blurred by sigma 0.7, X blurred by sigma 0.7 and
1.5, and grey without the grating (the colour and grating scores of each). ``threads`` trains the evaluate stage's
two feature networks (the shape-only classifier and the detail network, default params) at 1 and at 2 torch threads
for seeds 0 and 1, and writes the Fréchet distances of the Y and X-hat stand-ins (as in ``cost``) in each to
``bench/results/thread_drift.json``: how far another thread count moves a score, against how far another seed does.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from multistage.data.base import load_dataset
from multistage.data.dsprites import make_dsprites


def data(work_dir: Path):
    folder = work_dir / "textured32"
    if not (folder / "meta.json").exists():
        make_dsprites(folder, n_images=60000, seed=0, variant="textured", image_size=32)
    return load_dataset(folder)


class Clock:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def __call__(self, name: str):
        clock = self

        class Timed:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.rows.append((name, time.perf_counter() - self.wall, time.process_time() - self.cpu))

        return Timed()


def cost(dataset) -> None:
    from multistage.evaluation.config import EvaluationConfig
    from multistage.evaluation.detail import DetailProbeData, train_detail_network
    from multistage.evaluation.representation import held_out_indices
    from multistage.evaluation.scoring import feature_extractor
    from multistage.metrics.frechet import frechet_distance
    from multistage.metrics.reconstruction import ForegroundErrorAccumulator

    config, device, clock = EvaluationConfig(), torch.device("cpu"), Clock()

    def timed(group):
        return clock(group)

    network, _ = train_detail_network(config, dataset, dataset.images, device, timed, show_progress=False)
    with clock("detail_probes: features and fits of the training rows"):
        probes = DetailProbeData(config, dataset, dataset.images)
    extract = feature_extractor(network, device)
    indices = held_out_indices(dataset, config.eval_images, config.seed)
    features = {space: {"x": [], "y": [], "x_hat": []} for space in ("network", "map")}
    foreground = {name: ForegroundErrorAccumulator(0.1) for name in ("y", "x_hat")}
    with clock("held-out pass: detail features of X, Y, X-hat, X-sample; foreground errors"):
        for start in range(0, len(indices), config.batch_size):
            x = torch.from_numpy(dataset.images[indices[start : start + config.batch_size]]).float() / 255
            y = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5)))
            x_hat = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 0.7, 0.7)))
            for name, images in (("x", x), ("y", y), ("x_hat", x_hat)):
                features["network"][name].append(extract(images))
                features["map"][name].append(probes.extract(images))
            extract(x_hat)  # X-sample's features, as the stage extracts them
            foreground["y"].update(x, y, y)
            foreground["x_hat"].update(x, x_hat, y)
    stacked = {space: {k: np.concatenate(v) for k, v in sets.items()} for space, sets in features.items()}
    with clock("detail Fréchet: real-vs-real reference features and the distances"):
        pool = dataset.train_indices
        reference = np.concatenate(
            [
                extract(
                    torch.from_numpy(dataset.images[np.sort(pool[start : start + config.batch_size])]).float() / 255
                )
                for start in range(0, len(indices), config.batch_size)
            ]
        )
        for other in (stacked["network"]["y"], stacked["network"]["x_hat"], stacked["network"]["x_hat"], reference):
            frechet_distance(stacked["network"]["x"], other)
    with clock("detail probes: scores of X, Y and X-hat"):
        row = probes.scorer(stacked["map"], indices)
        shared, variant = row(None), row(stacked["map"]["x_hat"])
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; torch threads {torch.get_num_threads()}")
    for name, wall, cpu in clock.rows:
        print(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  {name}")
    wall, cpu = sum(r[1] for r in clock.rows), sum(r[2] for r in clock.rows)
    print(f"{wall:7.1f} s wall {cpu:7.1f} s CPU  in all")
    print("X ceiling:", {k: round(v, 3) for k, v in shared.items() if k.endswith(".x")})
    print("stand-in X-hat gap closed:", variant["detail.gap_closed"])


def choice(dataset, probe_images: int) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from multistage.evaluation.detail import column_kinds, column_values
    from multistage.metrics.detail import circular_embedding, column_score, detail_feature_map

    rng = np.random.default_rng(0)
    train = np.sort(rng.permutation(dataset.train_indices)[:probe_images])
    test = dataset.test_indices[:5000]
    kinds = {k: v for k, v in column_kinds(dataset, ("shape",)).items() if v != "class"}
    truth_train, truth_test = column_values(dataset, train, kinds), column_values(dataset, test, kinds)
    maps = {"raw pixels": lambda rows: dataset.images[rows].reshape(len(rows), -1) / 255.0}
    maps["detail_feature_map"] = lambda rows: detail_feature_map(dataset.images[rows])
    for name, feature_map in maps.items():
        for alpha in (1.0, 10.0, 100.0):
            started = time.perf_counter()
            scaler = StandardScaler().fit(feature_map(train))
            fitted, tested = scaler.transform(feature_map(train)), scaler.transform(feature_map(test))
            scores = {}
            for column, kind in kinds.items():
                circular = not isinstance(kind, str)
                target = circular_embedding(truth_train[column], kind) if circular else truth_train[column]
                predicted = Ridge(alpha=alpha).fit(fitted, target).predict(tested)
                scores[column] = column_score(
                    truth_test[column], predicted, "circular" if circular else "continuous", kind if circular else None
                )
            took = time.perf_counter() - started
            print(f"{name}, ridge alpha {alpha}: {took:.0f} s;", {k: round(v, 3) for k, v in scores.items()})


def robustness(dataset, probe_images: int) -> None:
    from multistage.data import dsprites
    from multistage.data.sources import fit_images
    from multistage.evaluation.detail import column_kinds, column_values
    from multistage.metrics.detail import DetailProbes, blurred, detail_feature_map, fit_detail_probes

    rng = np.random.default_rng(0)
    train = np.sort(rng.permutation(dataset.train_indices)[:probe_images])
    test = dataset.test_indices[:2000]
    kinds = {k: v for k, v in column_kinds(dataset, ("shape",)).items() if v != "class"}
    x = dataset.images[test].astype(np.float64) / 255.0
    nuisance = {name: np.asarray(column)[test] for name, column in dataset.nuisance.items()}
    classes, size = dataset.factor_classes[test], x.shape[-1]

    def drawn(**changes):
        values = nuisance | changes
        return fit_images(dsprites.render_textured(classes, values, grating_contrast=0.0), size, "resize") / 255.0

    grey = {name: np.full(len(test), 0.75) for name in dsprites.COLOUR_NAMES}
    # the grating's mean intensity: what a decoder that cannot draw the grating paints at best
    mean_intensity = 1.0 - dsprites.TextureOptions().grating_contrast / 2
    flat = drawn()
    sets = {
        "X": x,
        "true colours, no grating": flat,
        "conditional mean": flat * mean_intensity,
        "conditional mean blurred 0.7": blurred(flat * mean_intensity, 0.7),
        "X blurred 0.7": blurred(x, 0.7),
        "X blurred 1.5": blurred(x, 1.5),
        "grey, no grating": drawn(**grey),
    }
    truth = column_values(dataset, test, kinds)
    fit_images_ = dataset.images[train]
    columns = column_values(dataset, train, kinds)
    fitted = {
        "whole map": DetailProbes(detail_feature_map(fit_images_), columns, kinds, alpha=10.0),
        "feature groups": fit_detail_probes(fit_images_, columns, kinds, 0.0),
        "groups + blur 0.8": fit_detail_probes(fit_images_, columns, kinds, 0.8),
    }
    for name, probes in fitted.items():
        for label, images in sets.items():
            scores = probes.scores(detail_feature_map(images), truth)
            colour = np.mean([scores[f"colour_{c}"] for c in "rgb"])
            shown = f"colour {colour:.3f}, grating angle {scores['grating_angle']:.3f}, "
            shown += f"frequency {scores['grating_frequency']:.3f}, scale {scores['scale']:.3f}"
            print(f"{name:18s} {label:30s} {shown}")


def threads(dataset, out: Path) -> None:
    import dataclasses
    import json

    from multistage.evaluation.config import EvaluationConfig
    from multistage.evaluation.detail import train_detail_network
    from multistage.evaluation.representation import held_out_indices
    from multistage.evaluation.scoring import train_classifier
    from multistage.metrics.frechet import extract_features, frechet_distance

    base, device = EvaluationConfig(), torch.device("cpu")
    indices = held_out_indices(dataset, base.eval_images, base.seed)
    x = dataset.images[indices].astype(np.float32) / 255
    blurs = {"y": 1.5, "x_hat": 0.7}  # the stand-ins of ``cost``
    stand_ins = {name: torch.from_numpy(gaussian_filter(x, sigma=(0, 0, s, s))) for name, s in blurs.items()}
    stand_ins["x"] = torch.from_numpy(x)
    rows = []
    for seed in (0, 1):
        detail = dataclasses.replace(base.config_of("detail_frechet"), seed=seed)
        config = dataclasses.replace(
            base,
            classifier=dataclasses.replace(base.classifier, seed=seed),
            metric_configs=base.metric_configs | {"detail_frechet": detail},
        )
        for count in (1, 2):
            torch.set_num_threads(count)
            started = time.perf_counter()
            networks = {
                "factor_classifier": train_classifier(
                    config, dataset, dataset.images, np.random.default_rng(seed), device, Clock(), False
                )[0],
                "detail_classifier": train_detail_network(config, dataset, dataset.images, device, Clock(), False)[0],
            }
            row = {"seed": seed, "threads": count, "seconds": round(time.perf_counter() - started, 1)}
            for space, network in networks.items():
                features = {name: extract_features(network, images, 250) for name, images in stand_ins.items()}
                for name in ("y", "x_hat"):
                    row[f"frechet.{space}.{name}"] = frechet_distance(features["x"], features[name])
            print(row, flush=True)
            rows.append(row)
    summary = thread_drift(rows) | {"eval_images": len(indices)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k.endswith("change")}, indent=1))


def thread_drift(rows: list[dict]) -> dict:
    """``rows`` (one per seed and thread count) with each space's X-hat / Y ratio added, and the largest relative
    change of every score between thread counts at one seed, and between seeds at one thread count."""
    for row in rows:
        for space in ("factor_classifier", "detail_classifier"):
            row[f"ratio.{space}"] = row[f"frechet.{space}.x_hat"] / row[f"frechet.{space}.y"]
    keys = [key for key in rows[0] if key.startswith(("frechet.", "ratio."))]

    def spread(pairs):
        return {key: max(abs(a[key] - b[key]) / min(a[key], b[key]) for a, b in pairs) for key in keys}

    by = {(r["seed"], r["threads"]): r for r in rows}
    return {
        "runs": rows,
        "threads_relative_change": spread([(by[s, 1], by[s, 2]) for s in (0, 1)]),
        "seed_relative_change": spread([(by[0, t], by[1, t]) for t in (1, 2)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cost", "choice", "robustness", "threads"))
    parser.add_argument("--work-dir", type=Path, default=Path("bench/work"))
    parser.add_argument("--probe-images", type=int, default=8000)
    args = parser.parse_args()
    dataset = data(args.work_dir)
    if args.what == "cost":
        cost(dataset)
    elif args.what == "choice":
        choice(dataset, args.probe_images)
    elif args.what == "threads":
        threads(dataset, Path("bench/results/thread_drift.json"))
    else:
        robustness(dataset, args.probe_images)


if __name__ == "__main__":
    main()
