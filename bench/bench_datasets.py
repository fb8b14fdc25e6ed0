"""Throughput of making each procedural and bundled dataset at full size (images/s), as ``prepare`` makes it.

Full size: every dSprites variant is the whole 737,280-image grid, the pendulum its default 20 x 20 x 20 grid,
the bundled sets all their images (Fashion-MNIST when its Debian package is installed) fitted to 32 x 32. Each is
written into a temporary folder end to end (memory-mapped images.npy, factors.parquet, meta.json, the final
load) and removed; one line per dataset gives the count, the seconds and images/s. Imports and the scream
photos are loaded before the clocks start.

    .venv/bin/python -m bench.bench_datasets [--datasets dsprites-binary pendulum ...] [--n-images N]
        [--workers W] [--out-dir DIR]

``--n-images`` times a random subset instead (a subset of dSprites is scattered over the grid, while the full
grid is rendered in order). Measured figures: docs/datasets.md, "Generation speed".
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from multistage.data import bundled, dsprites, pendulum, sources

DATASETS = [f"dsprites-{variant}" for variant in dsprites.VARIANTS] + ["pendulum", "digits", "mnist5k", "fashion_mnist"]


def make(name: str, out_dir: Path, n_images: int | None, workers: int):
    if name.startswith("dsprites-"):
        return dsprites.make_dsprites(
            out_dir, n_images=n_images, variant=name.removeprefix("dsprites-"), num_workers=workers
        )
    if name == "pendulum":
        return pendulum.make_pendulum(out_dir, n_images=n_images)
    return sources.write_image_source(getattr(bundled, name)(), out_dir, n_images=n_images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=DATASETS)
    parser.add_argument("--n-images", type=int, default=None, help="a random subset (default: full size)")
    parser.add_argument("--workers", type=int, default=None, help="dSprites threads (default: the CPUs available)")
    parser.add_argument("--out-dir", default=None, help="parent folder for the temporary datasets")
    args = parser.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    import pandas  # noqa: F401  (imported before timing: one-time costs, not generation)
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401

    dsprites.scream_photos()
    print(f"{len(os.sched_getaffinity(0))} CPUs available; dSprites threads: {workers}")
    for name in args.datasets:
        if name == "fashion_mnist" and not bundled.FASHION_MNIST_ROOT.is_dir():
            print(f"{name}: skipped, {bundled.FASHION_MNIST_ROOT} is absent (make fashion-mnist)")
            continue
        out_dir = Path(tempfile.mkdtemp(prefix=f"bench_{name}_", dir=args.out_dir))
        try:
            start = time.perf_counter()
            dataset = make(name, out_dir / "data", args.n_images, workers)
            seconds = time.perf_counter() - start
            n, shape, size = len(dataset), dataset.image_shape, dataset.images.nbytes / 2**30
            del dataset
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        print(
            f"{name}: {n:,} x {' x '.join(map(str, shape))} ({size:.2f} GiB) in {seconds:.1f} s: "
            f"{n / seconds:,.0f} images/s"
        )


if __name__ == "__main__":
    main()
