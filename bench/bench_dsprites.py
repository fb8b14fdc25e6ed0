"""Throughput of procedural dSprites generation (multistage.data.dsprites.make_dsprites).

Renders the full grid (737,280 binary 64 x 64 images, the published dSprites specification of
Matthey et al. 2017) into a memory-mapped images.npy in a temporary folder and prints images/s and the total
seconds, end to end (factor table, meta.json and the final load included).

    .venv/bin/python -m bench.bench_dsprites [--n-images N] [--variant binary|textured|color|noisy|scream] [--workers W]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from multistage.data.dsprites import GRID_SIZE, VARIANTS, make_dsprites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=None, help="subset size (default: the full grid)")
    parser.add_argument("--variant", choices=VARIANTS, default="binary")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: the CPUs available)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--out-dir", default=None, help="parent folder for the temporary dataset")
    args = parser.parse_args()

    workers = args.workers or len(os.sched_getaffinity(0))
    out_dir = tempfile.mkdtemp(prefix="bench_dsprites_", dir=args.out_dir)
    try:
        start = time.perf_counter()
        dataset = make_dsprites(
            out_dir,
            n_images=args.n_images,
            variant=args.variant,
            num_workers=workers,
            chunk_size=args.chunk_size,
        )
        seconds = time.perf_counter() - start
        n = len(dataset)
        size_gib = dataset.images.nbytes / 2**30
        del dataset
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    grid = " (full grid)" if n == GRID_SIZE else ""
    print(
        f"dsprites {args.variant}: {n} images{grid}, {size_gib:.2f} GiB, workers={workers}, "
        f"chunk={args.chunk_size}: {seconds:.1f} s total, {n / seconds:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
