"""Time and memory of the evaluation suite on the full dSprites grid (737,280 images, 10 latents).

Three measurements (issue 5, "Speed"), each printed with its target; run them one at a time on a quiet machine:

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_metrics mig      # sampling MIG, 737,280 codes x 10 latents
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_metrics suite    # the whole ground-truth suite, one model
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_metrics memory   # peak memory of the evaluate stage

Codes: ``--codes PATH`` reads a stage-one ``codes.parquet`` (mu_<j>, logvar_<j>, one row per image of the full
grid in dSprites order); without it the codes are synthetic and shaped like a trained 10-latent beta-TCVAE's:
five active latents, each a noisy monotone function of one factor (shape, scale, orientation, posX, posY) with
posterior sigmas log-uniform in [0.02, 0.2] (a decade), and five collapsed latents (means ~ N(0, 0.05^2), sigmas
uniform in [0.85, 1]). The estimators' cost depends on N, the latents and the sigma range, not on the model.

``suite`` runs the evaluate stage's own code path (``multistage.evaluation.factor_set.factor_set_scores``) with the
default ``evaluate`` params on the full grid: the sampling MIG, SAP, Z-diff, the FactorVAE score and DCI (lasso;
``--gbt`` adds DCI with gradient-boosted trees), plus the histogram MIG on 5000 held-out codes as the stage computes it.

``memory`` runs the whole evaluate stage (``stages.evaluate.run``) in a child process on the full binary grid
(generated into ``--work-dir`` with ``multistage.data.dsprites.make_dsprites`` unless ``--data`` names a prepared
folder), with freshly initialised stage-one / stage-two models and the synthetic codes file, and reports the
child's peak resident set size: ``VmHWM`` of /proc/self/status at the end of the stage (``ru_maxrss`` would
report the forking parent's size after exec). It counts the pages of the memory-mapped images the stage touches.
Also printed: the resident size and the high-water mark at the start of each metric group, and where a 20 ms
sampler saw the peak. The default params are used except ``classifier.steps`` (``--classifier-steps``, default
100): memory does not depend on the number of steps, the run time does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import cpu_seconds

NAMES = ("shape", "scale", "orientation", "posX", "posY")
SIZES = (3, 6, 40, 32, 32)
GRID = int(np.prod(SIZES))


def grid_factors() -> np.ndarray:
    """Factor classes of the full grid in dSprites order (shape slowest, posY fastest)."""
    return np.stack(np.unravel_index(np.arange(GRID), SIZES), axis=1).astype(np.int64)


def synthetic_codes(factors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) (N, 10) shaped like a trained model's (module docstring)."""
    rng = np.random.default_rng(seed)
    count = len(factors)
    scaled = factors / (np.asarray(SIZES) - 1)  # in [0, 1]
    active = np.stack(
        [
            2.0 * scaled[:, 0] - 1.0,
            np.tanh(3 * (scaled[:, 1] - 0.5)),
            np.cos(2 * np.pi * scaled[:, 2]),
            2.0 * scaled[:, 3] - 1.0,
            2.0 * scaled[:, 4] - 1.0,
        ],
        1,
    )
    mu = np.concatenate([active + rng.normal(0, 0.05, active.shape), rng.normal(0, 0.05, (count, 5))], 1)
    sigma = np.concatenate(
        [np.exp(rng.uniform(np.log(0.02), np.log(0.2), (count, 5))), rng.uniform(0.85, 1.0, (count, 5))], 1
    )
    return mu, 2.0 * np.log(sigma)


def load_codes(path: str | None, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    if path is None:
        mu, logvar = synthetic_codes(factors)
        return mu, logvar, "synthetic (5 active latents, sigma in [0.02, 0.2]; 5 collapsed)"
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    latents = sorted(int(n.split("_")[1]) for n in table.column_names if n.startswith("mu_"))
    mu = np.stack([table.column(f"mu_{j}").to_numpy() for j in latents], 1).astype(np.float64)
    logvar = np.stack([table.column(f"logvar_{j}").to_numpy() for j in latents], 1).astype(np.float64)
    if len(mu) != GRID:
        sys.exit(f"{path} holds {len(mu)} rows; the full grid has {GRID}")
    return mu, logvar, path


def write_codes(path: Path, mu: np.ndarray, logvar: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"index": np.arange(len(mu)), "split": np.zeros(len(mu), dtype=np.uint8)}
    columns |= {f"mu_{j}": mu[:, j].astype(np.float32) for j in range(mu.shape[1])}
    columns |= {f"logvar_{j}": logvar[:, j].astype(np.float32) for j in range(mu.shape[1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def bench_mig(args) -> None:
    from multistage.metrics.mig_sampling import sampling_mutual_information_gap

    factors = grid_factors()
    mu, logvar, source = load_codes(args.codes, factors)
    print(
        f"sampling MIG: {GRID:,} codes x {mu.shape[1]} latents ({source}), {os.environ.get('OMP_NUM_THREADS')} threads"
    )
    workers = args.workers
    started, cpu = time.perf_counter(), cpu_seconds()
    result = sampling_mutual_information_gap(
        mu, logvar, factors, NAMES, SIZES, exclude_factors=("shape",), workers=workers
    )
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    print(
        f"sampling MIG took {seconds:.1f} s wall, {cpu:.1f} s CPU with {workers} worker thread(s) (target <= 60 s "
        f"on 2 cores: {seconds / 60:.2f} of it); {load()}; peak RSS {peak_memory_gib():.2f} GiB"
    )


class FullGrid:
    """The parts of a dataset the factor-set scores read."""

    factor_names, factor_sizes, has_ground_truth, meta = NAMES, SIZES, True, {"dataset": "dsprites"}

    def __init__(self) -> None:
        self.factor_classes = grid_factors()

    def __len__(self) -> int:
        return GRID


class CodesOnly:
    """A stand-in stage-one model for reading codes.parquet: 10 Gaussian latents, no discrete code."""

    def __init__(self, latents: int) -> None:
        import types

        self.config = types.SimpleNamespace(latent_dim=latents)
        self.code_names = [f"z{j}" for j in range(latents)]


def bench_suite(args) -> None:
    import torch

    from multistage.evaluation.factor_set import factor_set_scores
    from multistage.evaluation.representation import representation_from_codes, timer
    from multistage.metrics.mig import mutual_information_gap
    from stages.evaluate import EvaluateParams, evaluation_config
    from stages.train_stage_one import encode_all

    def encode(model, rows, batch_size):
        return encode_all(model, rows, torch.device("cpu"), batch_size)

    factors = grid_factors()
    mu, logvar, source = load_codes(args.codes, factors)
    params = EvaluateParams(metrics=["mig_sampling", "sap", "zdiff", "factorvae_score", "dci"])
    print(
        f"ground-truth suite on {GRID:,} codes x {mu.shape[1]} latents ({source}), default evaluate params, "
        f"{os.environ.get('OMP_NUM_THREADS')} threads"
    )
    work = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        write_codes(work / "models" / "stage_one" / "codes.parquet", mu, logvar)
        os.chdir(work)
        scores: dict = {}
        started, cpu = time.perf_counter(), cpu_seconds()
        codes_file = work / "models" / "stage_one" / "codes.parquet"
        scores |= factor_set_scores(
            evaluation_config(params), FullGrid(), CodesOnly(mu.shape[1]), encode, True, timer(scores), codes_file
        )
        held_out = np.random.default_rng(0).choice(GRID, params.eval_images, replace=False)
        with timer(scores)("mig_histogram"):
            scores |= mutual_information_gap(
                representation_from_codes(mu[held_out], None, ()), factors[held_out], NAMES, exclude_factors=("shape",)
            )
        if args.gbt:
            gbt = params.model_copy(
                update={"metrics": ["dci"], "dci": params.dci.model_copy(update={"regressor": "gbt"})}
            )
            gbt_scores: dict = {}
            scores |= factor_set_scores(
                evaluation_config(gbt), FullGrid(), CodesOnly(mu.shape[1]), encode, True, timer(gbt_scores), codes_file
            )
            scores["evaluate.seconds.dci_gbt"] = gbt_scores["evaluate.seconds.dci"]
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    finally:
        os.chdir(Path(__file__).resolve().parent.parent)
        shutil.rmtree(work, ignore_errors=True)
    for key in sorted(scores):
        if key.startswith("evaluate.seconds."):
            print(f"  {key.removeprefix('evaluate.seconds.'):>18}: {scores[key]:7.1f} s")
    headline = (
        "mig.sampling",
        "mig.histogram20",
        "sap",
        "zdiff",
        "factorvae_score",
        "dci.lasso.disentanglement",
        "dci.gbt.disentanglement",
    )
    print(json.dumps({k: round(scores.get(k, scores.get(f"x.{k}", float("nan"))), 4) for k in headline}))
    print(
        f"ground-truth suite took {seconds:.1f} s wall, {cpu:.1f} s CPU (target <= 180 s on 2 cores: "
        f"{seconds / 180:.2f} of it); {load()}; peak RSS {peak_memory_gib():.2f} GiB"
    )


def prepare_project(work: Path, data: str | None, mu: np.ndarray, logvar: np.ndarray) -> None:
    """A project folder for the evaluate stage: data/prepared (the full binary grid), fresh models, the codes."""
    from multistage.models.files import save_model
    from multistage.models.registry import build

    (work / "data").mkdir(parents=True, exist_ok=True)
    prepared = work / "data" / "prepared"
    if data is not None:
        prepared.symlink_to(Path(data).resolve())
    else:
        from multistage.data.dsprites import make_dsprites

        started = time.perf_counter()
        make_dsprites(prepared, n_images=None, variant="binary", num_workers=len(os.sched_getaffinity(0)))
        print(f"generated the full binary grid in {time.perf_counter() - started:.0f} s")
    stage_one = build(
        "stage_one", "betatcvae", latent_dim=mu.shape[1], image_channels=1, image_size=64, dataset_size=GRID
    )
    stage_two = build("stage_two", "msvae", image_channels=1, image_size=64)
    (work / "models" / "stage_one").mkdir(parents=True, exist_ok=True)
    (work / "models" / "stage_two").mkdir(parents=True, exist_ok=True)
    save_model(work / "models" / "stage_one" / "model.pt", "stage_one", "betatcvae", stage_one)
    save_model(work / "models" / "stage_two" / "model.pt", "stage_two", "msvae", stage_two)
    write_codes(work / "models" / "stage_one" / "codes.parquet", mu, logvar)


CHILD = """
import contextlib, json, resource, sys, threading, time, torch
import multistage.evaluation.scoring as scoring
import stages.evaluate as evaluate
torch.set_num_threads({threads})
state = {{"group": "setup", "peak": 0.0, "peak_group": ""}}

def resident_gib(field="VmRSS"):
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields[field].split()[0]) / 2**20

def sample():  # which metric group the process was in when its resident memory peaked
    while True:
        current = resident_gib()
        if current > state["peak"]:
            state["peak"], state["peak_group"] = current, state["group"]
        time.sleep(0.02)

def labelled_timer(scores, timer=scoring.timer):
    timed = timer(scores)
    @contextlib.contextmanager
    def labelled(group):
        state["group"] = group
        state.setdefault("start_gib", {{}})[group] = round(resident_gib(), 2)
        state.setdefault("high_water_gib", {{}})[group] = round(resident_gib("VmHWM"), 2)
        with timed(group):
            yield
        state["group"] = "between groups"
    return labelled

scoring.timer = labelled_timer
threading.Thread(target=sample, daemon=True).start()
params = evaluate.EvaluateParams.model_validate({params})
started = time.perf_counter()
scores = evaluate.run(params, torch.device("cpu"), tracker=None, show_progress=False)
print(json.dumps({{"seconds": time.perf_counter() - started, "peak_group": state["peak_group"],
                   "sampled_peak_gib": state["peak"], "resident_gib_at_group_start": state.get("start_gib"),
                   "peak_gib": resident_gib("VmHWM"),
                   "high_water_gib_at_group_start": state.get("high_water_gib"),
                   "timing": {{k: round(v, 1) for k, v in scores.items() if k.startswith("evaluate.seconds")}}}}))
"""


def bench_memory(args) -> None:
    from stages.evaluate import EvaluateParams

    factors = grid_factors()
    mu, logvar, source = load_codes(args.codes, factors)
    work = Path(tempfile.mkdtemp(prefix="bench_evaluate_", dir=args.work_dir))
    project = Path(__file__).resolve().parent.parent
    try:
        prepare_project(work, args.data, mu, logvar)
        del mu, logvar
        params = EvaluateParams().model_dump()
        params["classifier"]["steps"] = args.classifier_steps
        if args.metrics:
            params["metrics"] = args.metrics.split(",")
        threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
        env = {**os.environ, "PYTHONPATH": str(project)}
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD.format(threads=threads, params=repr(params))],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            sys.exit(f"the evaluate stage failed:\n{child.stderr[-4000:]}")
        wall = time.perf_counter() - started
        report = json.loads(child.stdout.strip().splitlines()[-1])
        # the stage process's high-water mark. Not ru_maxrss: after fork + exec Linux reports at least the forking
        # parent's resident size there (3.7 GB of generated data here), not the new program's own peak
        peak = report["peak_gib"]
        print(
            f"evaluate stage on the full grid ({GRID:,} images, codes: {source}), default params but "
            f"classifier.steps={args.classifier_steps}, {threads} threads"
        )
        print(json.dumps(report["timing"]))
        print("resident GiB at the start of each group:", json.dumps(report["resident_gib_at_group_start"]))
        print(
            "high-water mark (VmHWM) at the start of each group:", json.dumps(report["high_water_gib_at_group_start"])
        )
        print(
            f"stage run {report['seconds']:.0f} s (process {wall:.0f} s); peak resident memory {peak:.2f} GiB "
            f"(target <= 4 GiB: {peak / 4:.2f} of it; sampled every 20 ms: {report['sampled_peak_gib']:.2f} GiB, in "
            f"{report['peak_group']!r}); {load()}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("mig", "suite", "memory"))
    parser.add_argument("--codes", default=None, help="a codes.parquet of the full grid (default: synthetic codes)")
    parser.add_argument("--gbt", action="store_true", help="suite: also DCI with gradient-boosted trees")
    parser.add_argument("--data", default=None, help="memory: a prepared full-grid dataset folder to reuse")
    parser.add_argument("--work-dir", default=None, help="memory: parent folder for the temporary project")
    parser.add_argument("--classifier-steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="mig: latents in parallel threads (2 cores: 2)")
    parser.add_argument("--metrics", default=None, help="memory: evaluate.metrics, comma-separated (default: all)")
    args = parser.parse_args()
    {"mig": bench_mig, "suite": bench_suite, "memory": bench_memory}[args.which](args)


if __name__ == "__main__":
    main()
