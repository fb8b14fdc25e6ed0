"""A short beta sweep of beta-VAE and beta-TCVAE on binary dSprites with `dvc exp run`: reconstruction against MIG,
the trade-off of the beta-TCVAE paper's Figure 2 at what two CPU cores allow (stated in the output).

The sweep runs in its own scratch DVC repository (a copy of the project's code, dvc.yaml and params.yaml): one
`dvc exp run -n <model>-beta<beta> -S stage_one.model=<model> -S stage_one.<model>.beta=<beta> stage_one` per
point. Each trained model is scored on held-out images: reconstruction = binary cross-entropy of
Y = decode_mean(representation(x)) in nats per image; MIG = the histogram estimator (20 bins), and without shape.

Writes ``plots/beta_sweep_<model>.json`` (for the DVC plot ``stage_one_beta_sweep`` of dvc.yaml),
``plots/beta_sweep.csv`` and ``docs/beta_sweep.png`` (the figure of docs/studies/beta-sweep.md).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.beta_sweep [--steps 500] [--betas 1 4 16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

PROJECT = Path(__file__).resolve().parent.parent
PLOTS = PROJECT / "plots"


def make_repository(workdir: Path, args) -> None:
    """A fresh git + DVC copy of the project at ``workdir`` with the sweep's params."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in ("multistage", "stages", "pipeline"):
        shutil.copytree(PROJECT / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, workdir / name)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["runtime"] = {"device": "cpu", "threads": 1}
    params["prepare"].update(dataset="dsprites", n_images=args.n_images, seed=0, test_fraction=0.1, image_size=None)
    params["prepare"]["dsprites"] = {"variant": "binary"}
    params["stage_one"].update(
        steps=args.steps,
        batch_size=args.batch_size,
        checkpoint_every=args.steps,
        log_every=max(1, args.steps // 10),
        latent_dim=10,
        architecture="auto",
    )
    for model in args.models:
        params["stage_one"][model]["warmup_steps"] = args.warmup_steps
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "beta sweep"],
    ):
        run(command, workdir)


def run(command: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "beta sweep")
    env.setdefault("GIT_AUTHOR_EMAIL", "sweep@multistage.invalid")
    env["GIT_COMMITTER_NAME"], env["GIT_COMMITTER_EMAIL"] = env["GIT_AUTHOR_NAME"], env["GIT_AUTHOR_EMAIL"]
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout


def score(workdir: Path, images_to_score: int) -> dict[str, float]:
    """Reconstruction (nats per image) and MIG of the stage-one model in ``workdir`` on held-out images."""
    from multistage.data.base import load_dataset, to_float
    from multistage.metrics.mig import mutual_information_gap
    from multistage.models.files import load_model

    model, _ = load_model(workdir / "models/stage_one/model.pt", "stage_one")
    dataset = load_dataset(workdir / "data/prepared")
    rows = np.sort(np.random.default_rng(0).permutation(dataset.test_indices)[:images_to_score])
    codes, bce = [], 0.0
    with torch.no_grad():
        for start in range(0, len(rows), 500):
            x = to_float(dataset.images[rows[start : start + 500]])
            code = model.representation(x)
            y = model.decode_mean(code).clamp(1e-6, 1 - 1e-6)
            bce += float(torch.nn.functional.binary_cross_entropy(y, x, reduction="sum"))
            codes.append(code.numpy())
    mig = mutual_information_gap(
        np.concatenate(codes), dataset.factor_classes[rows], dataset.factor_names, bins=20, exclude_factors=("shape",)
    )
    metrics = json.loads((workdir / "metrics/stage_one.json").read_text())
    return {
        "reconstruction": bce / len(rows),
        "mig": mig["mig.histogram20"],
        "mig_no_shape": mig["mig.histogram20.no_shape"],
        "kl": metrics.get("stage_one.kl", float("nan")),
        "seconds": metrics["stage_one.seconds"],
        "images_scored": int(len(rows)),
    }


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.6, 3.4))
    for model in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r for r in rows if r["model"] == model), key=lambda r: r["beta"])
        axis.plot([p["reconstruction"] for p in points], [p["mig"] for p in points], "o-", label=model)
        for p in points:
            axis.annotate(
                f"{p['beta']:g}", (p["reconstruction"], p["mig"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    axis.set_xlabel("reconstruction error (BCE, nats / image, held out)")
    axis.set_ylabel("MIG (histogram, 20 bins)")
    axis.legend(fontsize=8)
    axis.set_title("beta sweep on binary dSprites", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["betavae", "betatcvae"])
    parser.add_argument("--betas", nargs="+", type=float, default=[1.0, 4.0, 16.0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=60000)
    parser.add_argument("--images-to-score", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/multistage-beta-sweep"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    make_repository(args.workdir, args)
    rows = []
    for model in args.models:
        for beta in args.betas:
            name = f"{model}-beta{beta:g}"
            run(
                [
                    "dvc",
                    "exp",
                    "run",
                    "-n",
                    name,
                    "-S",
                    f"stage_one.model={model}",
                    "-S",
                    f"stage_one.{model}.beta={beta:g}",
                    "stage_one",
                ],
                args.workdir,
            )
            rows.append({"model": model, "beta": beta} | score(args.workdir, args.images_to_score))
            print(json.dumps(rows[-1]), flush=True)
    PLOTS.mkdir(exist_ok=True)
    for model in args.models:
        points = [{k: v for k, v in r.items() if k != "model"} for r in rows if r["model"] == model]
        (PLOTS / f"beta_sweep_{model}.json").write_text(json.dumps(points, indent=2) + "\n")
    with open(PLOTS / "beta_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    draw(rows, PROJECT / "docs" / "beta_sweep.png")
    print(
        f"{len(rows)} runs of {args.steps} steps (batch {args.batch_size}, 64x64 binary dSprites, "
        f"{args.n_images} images, 1 thread) in {time.perf_counter() - started:.0f} s; "
        f"`dvc exp show` in {args.workdir} lists them"
    )


if __name__ == "__main__":
    main()
