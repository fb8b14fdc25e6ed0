"""MS-GAN beside MS-VAE on textured dSprites at a small CPU budget (MS-VAE appendix E).

    .venv/bin/python -m bench.msgan_dsprites [--images 20000] [--stage-one-steps 1500] [--stage-two-steps 1000]
                                             [--out docs/msgan]

One self-contained run, every model built through the registry and trained by the one training loop: textured
dSprites resampled to 32 x 32; a beta-TCVAE stage one and its paired set; MS-VAE and MS-GAN on the same pairs,
steps and batch size. Scored on held-out images in the features of an in-domain factor classifier (Fréchet
distance, KID): Y, MS-VAE reconstructions and samples, MS-GAN samples, and each model's z-spread (the per-pixel
standard deviation across 8 z draws; 0 means z is ignored). Writes ``<out>/samples_textured_dsprites.png``,
``<out>/msgan_curves.png`` and ``<out>/results.json``. Results and settings: docs/studies/msgan.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multistage.data.base import to_float
from multistage.data.dsprites import make_dsprites
from multistage.data.sources import fit_images
from multistage.metrics.frechet import extract_features, frechet_distance, train_factor_classifier
from multistage.metrics.kid import kernel_distance
from multistage.models import build
from multistage.models.stage_two.pairing import make_pairs
from multistage.train import LoopConfig, seed_everything, train
from multistage.viz import plot_curves, save_rows

CACHE = Path(".multistage/bench")


def textured_dsprites(n_images: int, seed: int, size: int):
    """(images uint8 (N, 3, size, size), factor classes, factor sizes, factor names, train rows, test rows)."""
    folder = CACHE / f"dsprites_textured_{n_images}_{seed}"
    dataset = make_dsprites(folder, n_images=n_images, seed=seed, variant="textured", test_fraction=0.1)
    images = fit_images(np.asarray(dataset.images), size, "resize")
    return (
        images,
        np.asarray(dataset.factor_classes),
        dataset.factor_sizes,
        dataset.factor_names,
        dataset.train_indices,
        dataset.test_indices,
    )


def fit(
    model,
    step_fn,
    n_items: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    name: str,
    fingerprint: dict,
    progress_keys: tuple[str, ...],
):
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=learning_rate)
    loop = LoopConfig(
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=max(50, steps // 4),
        log_every=max(1, steps // 40),
        progress_keys=progress_keys,
    )
    started = time.perf_counter()
    result = train(
        model,
        optimizer,
        step_fn,
        n_items,
        loop,
        CACHE / f"msgan_bench_{name}.pt",
        json.dumps(fingerprint, default=str),
        description=name,
        extra_modules=model.auxiliary_state(),
    )
    model.eval()
    return result, round(time.perf_counter() - started, 1)


def z_spread(model, y: torch.Tensor, draws: int = 8, seed: int = 0) -> float:
    """Mean over the rows of y of the per-pixel standard deviation of generate(y, z) across ``draws`` z ~ N(0, I)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        samples = torch.stack(
            [model.generate(y, torch.randn(len(y), model.residual_dim, generator=generator)) for _ in range(draws)]
        )
    return float(samples.std(dim=0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, choices=(32, 64), default=32)
    parser.add_argument("--stage-one-steps", type=int, default=1000)
    parser.add_argument("--stage-one-learning-rate", type=float, default=5e-4)
    parser.add_argument("--stage-one-beta", type=float, default=4.0)
    parser.add_argument("--stage-two-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--msvae-learning-rate", type=float, default=1e-3)
    parser.add_argument("--generator-learning-rate", type=float, default=2e-4)
    parser.add_argument("--discriminator-learning-rate", type=float, default=2e-4)
    parser.add_argument("--gan-loss", choices=("nonsaturating", "hinge"), default="nonsaturating")
    parser.add_argument("--residual-dim", type=int, default=5)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/msgan"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    seed_everything(args.seed)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    images, factor_classes, factor_sizes, factor_names, train_rows, test_rows = textured_dsprites(
        args.images, args.seed, args.size
    )
    train_images = images[train_rows]
    seconds["data"] = round(time.perf_counter() - started, 1)

    # ---------------------------------------------------------------------------------------- stage one + pairs
    torch.manual_seed(args.seed)
    stage_one = build(
        "stage_one",
        "betatcvae",
        image_channels=3,
        image_size=args.size,
        latent_dim=10,
        beta=args.stage_one_beta,
        warmup_steps=2 * args.stage_one_steps // 3,
        dataset_size=len(train_rows),
    )
    result_one, seconds["stage_one"] = fit(
        stage_one,
        lambda batch, step: stage_one.objective(to_float(train_images[np.sort(batch)]), step),
        len(train_rows),
        args.stage_one_steps,
        args.batch_size,
        args.stage_one_learning_rate,
        args.seed,
        "stage_one",
        vars(args) | {"model": "stage_one"},
        ("loss", "recon", "kl"),
    )
    pairs = make_pairs(stage_one, train_images, seed=args.seed)
    pair_index, pair_y = pairs["x_index"], pairs["y"]

    def pair_step(model):
        def step_fn(batch: np.ndarray, step: int):
            batch = np.sort(batch)
            return model.objective(
                to_float(train_images[pair_index[batch]]), torch.from_numpy(pair_y[batch].astype(np.float32)), step
            )

        return step_fn

    # ---------------------------------------------------------------------------------------- stage two
    torch.manual_seed(args.seed)
    msvae = build("stage_two", "msvae", image_channels=3, image_size=args.size, residual_dim=args.residual_dim)
    result_vae, seconds["msvae"] = fit(
        msvae,
        pair_step(msvae),
        len(pair_index),
        args.stage_two_steps,
        args.batch_size,
        args.msvae_learning_rate,
        args.seed,
        "msvae",
        vars(args) | {"model": "msvae"},
        ("loss", "recon", "kl"),
    )
    torch.manual_seed(args.seed)
    msgan = build(
        "stage_two",
        "msgan",
        image_channels=3,
        image_size=args.size,
        residual_dim=args.residual_dim,
        loss=args.gan_loss,
        discriminator_learning_rate=args.discriminator_learning_rate,
    )
    result_gan, seconds["msgan"] = fit(
        msgan,
        pair_step(msgan),
        len(pair_index),
        args.stage_two_steps,
        args.batch_size,
        args.generator_learning_rate,
        args.seed,
        "msgan",
        vars(args) | {"model": "msgan"},
        ("loss", "discriminator_loss", "discriminator_accuracy"),
    )

    # ---------------------------------------------------------------------------------------- held-out scores
    evaluation_started = time.perf_counter()
    rows = np.sort(np.random.default_rng(args.seed).permutation(test_rows)[: args.eval_images])  # all shapes
    x = to_float(images[rows])
    generator = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        y = stage_one.decode_mean(stage_one.representation(x))
        outputs = {
            "y": y,
            "msvae_reconstruction": msvae.reconstruct(x, y),
            "msvae_sample": msvae.generate(y, torch.randn(len(y), args.residual_dim, generator=generator)),
            "msgan_sample": msgan.generate(y, torch.randn(len(y), args.residual_dim, generator=generator)),
        }
    classifier, accuracies = train_factor_classifier(
        train_images,
        factor_classes[train_rows],
        factor_sizes,
        args.classifier_steps,
        128,
        args.seed,
        factor_names=factor_names,
    )
    real = extract_features(classifier, x)
    scores = {}
    for name, output in outputs.items():
        features = extract_features(classifier, output)
        kid, kid_std = kernel_distance(real, features, subsets=20, subset_size=min(500, len(rows)), rng=args.seed)
        scores[name] = {
            "frechet": round(frechet_distance(real, features), 3),
            "kid": round(kid, 5),
            "kid_std": round(kid_std, 5),
            "l1": round(float((output - x).abs().mean()), 4),
        }
    spread = {"msvae": round(z_spread(msvae, y[:200]), 5), "msgan": round(z_spread(msgan, y[:200]), 5)}
    seconds["evaluation"] = round(time.perf_counter() - evaluation_started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    columns = slice(0, 10)
    z_generator = torch.Generator().manual_seed(args.seed + 2)

    def draw(model):
        return model.generate(y[columns], torch.randn(10, args.residual_dim, generator=z_generator))

    with torch.no_grad():
        grid = [
            x[columns],
            y[columns],
            outputs["msvae_reconstruction"][columns],
            draw(msvae),
            draw(msvae),
            draw(msgan),
            draw(msgan),
            draw(msgan),
        ]
    grid = [torch.nn.functional.interpolate(row, scale_factor=64 // args.size, mode="nearest") for row in grid]
    save_rows(args.out / "samples_textured_dsprites.png", grid)
    plot_curves(
        args.out / "msgan_curves.png",
        result_gan.history,
        ["generator_loss", "discriminator_loss", "discriminator_accuracy", "discriminator_real", "discriminator_fake"],
        "MS-GAN on textured dSprites",
    )
    final = {
        name: {k: round(v, 4) for k, v in result.history[-1].items()}
        for name, result in (("stage_one", result_one), ("msvae", result_vae), ("msgan", result_gan))
    }
    report = {
        "data": f"textured dSprites, {args.images} images (10% held out), {args.size} x {args.size}",
        "held_out_images_scored": len(rows),
        "scores_vs_held_out_x": scores,
        "z_spread": spread,
        "classifier_held_out_accuracy": {k: round(v, 4) for k, v in accuracies.items()},
        "final_logs": final,
        "seconds": seconds | {"total": round(time.perf_counter() - started, 1)},
        "settings": vars(args) | {"out": str(args.out)},
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "final_logs"}, indent=2))


if __name__ == "__main__":
    main()
