"""Draw one small picture per procedural and bundled dataset into docs/datasets/ (the grids of docs/datasets.md).

Each dataset is made exactly as ``prepare`` makes it (same generators, seed 0, images fitted to what stage one
sees), 16 random images in a grid of 8 x 2 (torchvision ``make_grid`` / ``save_image``); the pendulum, a time
series, is drawn as curves: theta and its two intermediate series Y0 (undamped) and Y1 (unit mass) for a few
pendulums. Fashion-MNIST is drawn when its Debian package is installed (``make fashion-mnist``).

    .venv/bin/python -m bench.dataset_grids [--out docs/datasets]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from multistage.data import base, bundled, dsprites, pendulum, sources

COLUMNS, ROWS = 8, 2


def image_grid(images: np.ndarray, path: Path) -> None:
    """Save uint8 (n, C, H, W) images as one grid PNG."""
    import torch
    from torchvision.utils import save_image

    batch = torch.from_numpy(np.array(images, dtype=np.float32)).div(255.0)  # a writable copy
    save_image(batch, path, nrow=COLUMNS, padding=2, pad_value=0.5)


def pendulum_figure(dataset: base.GroundTruthDataset, path: Path) -> None:
    """theta, Y0 and Y1 of four pendulums against time: a base one, then longer, more damped, heavier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.asarray(dataset.meta["series"]["times_seconds"])
    last = np.asarray(dataset.factor_sizes) - 1
    wanted = [np.zeros(3, int), np.array([last[0], 0, 0]), np.array([0, last[1], 0]), np.array([0, 0, last[2]])]
    rows = [int(np.flatnonzero((dataset.factor_classes == classes).all(axis=1))[0]) for classes in wanted]
    figure, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharey=True)
    for axis, row in zip(axes, rows):
        length, damping, mass = dataset.factor_values[row]
        for name, label, style in (
            ("images", "theta", "-"),
            (pendulum.EXTRA_UNDAMPED, "Y0 undamped", ":"),
            (pendulum.EXTRA_DAMPED_UNIT_MASS, "Y1 m = 1", "--"),
        ):
            series = dataset.images if name == "images" else dataset.extra[name]
            axis.plot(times, pendulum.from_unit_interval(series[row, 0]), style, label=label, linewidth=1.2)
        axis.set_title(f"L={length:.2f} b={damping:.2f} m={mass:.2f}", fontsize=9)
        axis.set_xlabel("t (s)")
    axes[0].set_ylabel("theta (rad)")
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/datasets", help="folder for the PNGs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = COLUMNS * ROWS
    with tempfile.TemporaryDirectory(prefix="dataset_grids_") as scratch:
        scratch = Path(scratch)
        for variant in dsprites.VARIANTS:
            dataset = dsprites.make_dsprites(scratch / variant, n_images=n, seed=0, variant=variant)
            image_grid(np.asarray(dataset.images), out / f"dsprites_{variant}.png")
            print(f"{out / f'dsprites_{variant}.png'}: dSprites {variant}")
        sets = {"digits": bundled.digits, "mnist5k": bundled.mnist5k}
        if bundled.FASHION_MNIST_ROOT.is_dir():
            sets["fashion_mnist"] = bundled.fashion_mnist
        else:
            print(f"skipped fashion_mnist: {bundled.FASHION_MNIST_ROOT} is absent (make fashion-mnist)")
        for name, loader in sets.items():
            dataset = sources.write_image_source(loader(), scratch / name, n_images=n, seed=0)
            image_grid(np.asarray(dataset.images), out / f"{name}.png")
            print(f"{out / f'{name}.png'}: {name}, {dataset.images.shape[-1]} px as stage one sees it")
        options = pendulum.PendulumOptions(length_steps=4, damping_steps=4, mass_steps=4)
        dataset = pendulum.make_pendulum(scratch / "pendulum", options=options)
        pendulum_figure(dataset, out / "pendulum.png")
        print(f"{out / 'pendulum.png'}: pendulum theta, Y0, Y1")


if __name__ == "__main__":
    main()
