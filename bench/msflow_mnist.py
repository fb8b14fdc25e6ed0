"""MS-FLOW on a bundled digit set (MS-VAE appendix D): held-out log density of the Gaussian mixture alone and of
the mixture + conditional coupling flow, and the convergence of the flow trained with Y as the component means or
as samples around them (appendix D.1, Figure 20).

    .venv/bin/python -m bench.msflow_mnist [--data mnist5k|digits] [--steps 800] [--out docs/msflow]

Data split 80 / 20 by a seeded permutation; stage one a 10-component diagonal Gaussian mixture on dequantised
pixels (``reg_covar`` chosen on a validation quarter of the training set); stage two the flow trained twice from
the same weights, with y = mu_k ("means") or y ~ N(mu_k, Sigma_k) ("samples"), the held-out conditional log
density recorded every ``--eval-every`` steps. Numbers follow the convention of
``multistage.models.stage_two.msflow``. Writes ``<out>/results_<data>.json``, ``<out>/means_vs_samples_<data>.png``
and ``<out>/samples_<data>.png``. Single-threaded by default. Results: docs/studies/msflow.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from multistage.data import bundled
from multistage.models import build
from multistage.models.stage_two.msflow import dequantise
from multistage.train import LoopConfig, seed_everything, train
from multistage.viz import save_rows

REG_COVAR_GRID = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)


def load(name: str) -> np.ndarray:
    """uint8 (N, 1, H, W) images of a bundled digit set at their native size."""
    source = bundled.mnist5k() if name == "mnist5k" else bundled.digits()
    return np.concatenate(list(source.read_chunks(np.arange(source.n_images), 8192, None)))


def choose_reg_covar(model, train_images: torch.Tensor, seed: int) -> tuple[float, dict[str, float]]:
    """The grid value of reg_covar whose mixture, fitted on 3/4 of the training images, gives the highest mean
    log density (8-bit nats) on the other quarter."""
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed + 1))
    cut = len(order) * 3 // 4
    fit_part, validation = train_images[order[:cut]], train_images[order[cut:]]
    noise = torch.rand(validation.shape, generator=torch.Generator().manual_seed(seed + 2))
    scores = {}
    for reg_covar in REG_COVAR_GRID:
        model.config.mixture_reg_covar = reg_covar
        model.fit_mixture(fit_part, seed=seed)
        scores[f"{reg_covar:g}"] = float(model.mixture_log_likelihood(validation, flow=False, noise=noise).mean())
    best = max(scores, key=scores.get)
    return float(best), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("mnist5k", "digits"), default="mnist5k")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--coupling-layers", type=int, default=8)
    parser.add_argument("--hidden-units", type=int, default=512)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/msflow"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    seed_everything(args.seed)
    started = time.perf_counter()

    images = torch.from_numpy(load(args.data))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    cut = int(round(0.8 * len(images)))
    train_images, test_images = images[order[:cut]], images[order[cut:]]
    size = int(images.shape[-1])
    dim = int(images[0].numel())

    def fresh_model():
        torch.manual_seed(args.seed)
        return build(
            "stage_two",
            "msflow",
            image_channels=1,
            image_size=size,
            coupling_layers=args.coupling_layers,
            hidden_units=args.hidden_units,
            mixture_components=args.components,
        )

    model = fresh_model()
    reg_covar, validation_scores = choose_reg_covar(model, train_images, args.seed)
    model.config.mixture_reg_covar = reg_covar
    fit_started = time.perf_counter()
    sklearn_mixture = model.fit_mixture(train_images, seed=args.seed)
    fit_seconds = time.perf_counter() - fit_started
    mixture_state = {k: v.clone() for k, v in model.mixture.state_dict().items()}
    test_noise = torch.rand(test_images.shape, generator=torch.Generator().manual_seed(args.seed + 3))
    mixture_alone = model.mixture_log_likelihood(test_images, flow=False, noise=test_noise)
    mixture_train = model.mixture_log_likelihood(
        train_images,
        flow=False,
        noise=torch.rand(train_images.shape, generator=torch.Generator().manual_seed(args.seed + 4)),
    )

    runs: dict[str, dict] = {}
    models = {}
    for mode in ("mean", "sample"):
        model = fresh_model()
        model.config.mixture_reg_covar = reg_covar
        model.mixture.load_state_dict(mixture_state)
        evaluation_generator = torch.Generator().manual_seed(args.seed + 5)
        test_y = model.mixture_condition(test_images, mode, evaluation_generator, noise=test_noise)
        optimizer = torch.optim.Adam(model.optimised_parameters(), lr=args.learning_rate)

        def step_fn(batch: np.ndarray, step: int, model=model, mode=mode):
            x = train_images[np.sort(batch)]
            y = model.mixture_condition(x, mode, torch.Generator().manual_seed(args.seed * 1_000_003 + step))
            return model.objective(x, y, step)

        def evaluate(step: int, record: dict[str, float], model=model, test_y=test_y) -> None:
            # the loop hands over the record it keeps in its history (saved in the checkpoint), so the held-out
            # value written into it survives a resume
            model.eval()
            with torch.no_grad():
                held_out = torch.cat(
                    [
                        model.log_likelihood(
                            test_images[i : i + 500], test_y[i : i + 500], noise=test_noise[i : i + 500]
                        )
                        for i in range(0, len(test_images), 500)
                    ]
                )
            model.train()
            record["held_out_conditional"] = float(held_out.mean())

        checkpoint = Path(f".multistage/bench/msflow_{args.data}_{mode}_{args.seed}.pt")
        loop = LoopConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=max(args.eval_every, args.steps // 4),
            log_every=args.eval_every,
            progress_keys=("loss", "bits_per_dim"),
        )
        run_started = time.perf_counter()
        result = train(
            model,
            optimizer,
            step_fn,
            len(train_images),
            loop,
            checkpoint,
            json.dumps(vars(args) | {"mode": mode, "reg_covar": reg_covar}, default=str),
            callback=evaluate,
            description=f"MS-FLOW ({mode}s) on {args.data}",
        )
        train_seconds = time.perf_counter() - run_started
        curve = [
            {"step": int(r["step"]), "train_nll": r["loss"], "held_out_conditional": r["held_out_conditional"]}
            for r in result.history
        ]
        model.eval()
        whole = torch.cat(
            [
                model.mixture_log_likelihood(test_images[i : i + 250], noise=test_noise[i : i + 250])
                for i in range(0, len(test_images), 250)
            ]
        )
        runs[mode] = {
            "curve": curve,
            "train_seconds": round(train_seconds, 1),
            "held_out_mixture_plus_flow": round(float(whole.mean()), 2),
            "held_out_mixture_plus_flow_bits_per_dim": round(float(-whole.mean() / (dim * math.log(2))), 4),
            "final_held_out_conditional": round(curve[-1]["held_out_conditional"], 2),
        }
        models[mode] = model

    report = {
        "data": args.data,
        "dims": dim,
        "image_size": size,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "convention": "nats per 8-bit image: E_u log p((k + u) / 256) - D log 256, one u per image (fixed)",
        "mixture": {
            "components": args.components,
            "covariance_type": "diag",
            "space": "dequantised pixels [0, 1)",
            "reg_covar": reg_covar,
            "reg_covar_validation": validation_scores,
            "em_iterations": int(sklearn_mixture.n_iter_),
            "fit_seconds": round(fit_seconds, 1),
        },
        "held_out_mixture_alone": round(float(mixture_alone.mean()), 2),
        "held_out_mixture_alone_bits_per_dim": round(float(-mixture_alone.mean() / (dim * math.log(2))), 4),
        "train_mixture_alone": round(float(mixture_train.mean()), 2),
        "runs": runs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1),
        "paper": {
            "mixture_alone": -1585.086,
            "mixture_plus_flow": -1356.089,
            "note": "MNIST, the paper's convention is not stated; compare the gain, not the level",
        },
        "settings": vars(args) | {"out": str(args.out)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.data}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curves(args.out / f"means_vs_samples_{args.data}.png", report)
    draw_samples(args.out / f"samples_{args.data}.png", models["mean"], test_images, args.seed)
    print(
        json.dumps(
            {k: v for k, v in report.items() if k != "runs"}
            | {"runs": {m: {k: v for k, v in r.items() if k != "curve"} for m, r in runs.items()}},
            indent=2,
        )
    )


def plot_curves(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for mode, style in (("mean", "-"), ("sample", "--")):
        curve = report["runs"][mode]["curve"]
        axis.plot(
            [p["step"] for p in curve],
            [p["held_out_conditional"] for p in curve],
            style,
            label=f"Y as {mode}s: held-out log p(x | y)",
        )
    axis.axhline(report["held_out_mixture_alone"], color="grey", linestyle=":", label="mixture alone (held out)")
    axis.set_xlabel("training step")
    axis.set_ylabel("nats per image (8-bit convention)")
    axis.set_title(f"MS-FLOW on {report['data']} ({report['dims']} dims): Y as means vs samples")
    axis.legend(loc="lower right", fontsize=8)
    low = min(min(p["held_out_conditional"] for p in r["curve"]) for r in report["runs"].values())
    high = max(max(p["held_out_conditional"] for p in r["curve"]) for r in report["runs"].values())
    bottom = max(min(low, report["held_out_mixture_alone"]), report["held_out_mixture_alone"] - 0.5 * abs(high))
    axis.set_ylim(bottom - 0.05 * (high - bottom), high + 0.05 * (high - bottom))
    for mode, run in report["runs"].items():  # points below the axis are named, not hidden
        for point in run["curve"]:
            if point["held_out_conditional"] < bottom - 0.05 * (high - bottom):
                axis.annotate(
                    f"Y as {mode}s, step {point['step']}: {point['held_out_conditional']:.3g} (off the axis)",
                    (point["step"], bottom),
                    xytext=(point["step"] + 0.05 * report["steps"], bottom + 0.1 * (high - bottom)),
                    fontsize=7,
                    arrowprops={"arrowstyle": "->", "lw": 0.5},
                )
    figure.tight_layout()
    with_path = Path(path)
    figure.savefig(with_path, dpi=120)
    plt.close(figure)


def draw_samples(path: Path, model, test_images: torch.Tensor, seed: int) -> None:
    """Rows: component means, mixture samples (one per component), flow samples given each mean (two draws),
    held-out images."""
    mixture = model.mixture
    generator = torch.Generator().manual_seed(seed + 6)
    k = torch.arange(mixture.components)
    shape = (-1, *model.image_shape)
    means = mixture.condition(k).reshape(shape)
    mixture_samples = mixture.condition(k, "sample", generator).reshape(shape)
    with torch.no_grad():
        flow_rows = [
            model.generate(means, torch.randn(len(k), model.residual_dim, generator=generator)) for _ in range(2)
        ]
    save_rows(path, [means, mixture_samples, *flow_rows, dequantise(test_images[: len(k)]).clamp(0, 1)])


if __name__ == "__main__":
    main()
